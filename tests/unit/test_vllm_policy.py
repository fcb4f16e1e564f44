"""VLLMPolicy against a fake `vllm` module (`tests/fake_vllm.py`): what it sends the engine,
where it cuts turns (as HFPolicy does), and how the worker side loads the weights it is sent.
The trainer's pushes are in test_vllm_weight_sync.py, placement on GPUs in test_vllm_placement.py."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch

from fake_vllm import install_fake_vllm
from fakes import FakeRetriever
from s3_ray.agent.policy import HFPolicy, make_policy
from s3_ray.agent.vllm_policy import STOP_STRINGS, VLLMPolicy
from s3_ray.agent.vllm_weights import COMMIT_METHOD, EXTENSION, STAGE_METHOD, WeightLoader
from s3_ray.config import S3Config, SearcherConfig, TrainConfig
from s3_ray.models import load_causal_lm, resolve_model
from s3_ray.types import QAItem, RewardResult

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


@pytest.fixture
def fake_vllm(monkeypatch, tiny):
    return install_fake_vllm(monkeypatch, tiny[1])


def _ids(tok, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


CFG = SearcherConfig(model="tiny-random", max_new_tokens=24, temperature=0.7, top_p=0.9, max_prompt_tokens=64,
                     backend="vllm", gpu_memory_utilization=0.3)


def test_missing_vllm_names_the_gpu_extra(monkeypatch, tiny) -> None:
    model, tok = tiny
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"searcher.backend='vllm'.*s3-ray\[gpu\]"):
        VLLMPolicy("tiny-random", tok, CFG)
    with pytest.raises(ImportError, match=r"s3-ray\[gpu\]"):
        make_policy(model, tok, CFG)


def test_make_policy_picks_the_backend(fake_vllm, tiny) -> None:
    model, tok = tiny
    assert isinstance(make_policy(model, tok, CFG.model_copy(update={"backend": "transformers"})), HFPolicy)
    policy = make_policy(model, tok, CFG, seed=5)
    assert isinstance(policy, VLLMPolicy) and policy.llm.kwargs["seed"] == 5
    # built from the config's model, then loaded with the given model's own weights
    loaded = policy.llm.worker.loaded
    assert len(loaded) == 1 and loaded[0].keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[0][k], v) for k, v in model.state_dict().items())


def test_engine_and_sampling_settings(fake_vllm, tiny) -> None:
    _, tok = tiny
    policy = VLLMPolicy("tiny-random", tok, CFG, seed=3, enforce_eager=True)
    kw = policy.llm.kwargs
    assert kw == {"model": resolve_model("tiny-random"), "max_model_len": 64 + 24, "gpu_memory_utilization": 0.3,
                  "seed": 3, "worker_extension_cls": EXTENSION, "enforce_eager": True,
                  "enable_sleep_mode": True}  # a GPU platform: the engine sleeps through updates
    long_seq = list(range(5, 105))  # 100 ids: left-truncated to the last 64
    policy.generate([long_seq, [7, 8]])
    (sent, params), = policy.llm.calls
    assert sent == [long_seq[-64:], [7, 8]]
    assert params[0].kwargs == {"max_tokens": 24, "temperature": 0.7, "top_p": 0.9, "stop": list(STOP_STRINGS),
                                "include_stop_str_in_output": True}
    greedy = VLLMPolicy("tiny-random", tok, CFG.model_copy(update={"temperature": 0.0}))
    greedy.generate([[7]])
    assert greedy.llm.calls[0][1][0].kwargs["temperature"] == 0.0
    with pytest.raises(ValueError, match=r"seqs\[1\] is empty"):
        policy.generate([[1], []])
    assert policy.generate([]) == []


class PlannedHFModel:
    """Stands in for a transformers model: returns each row's planned stream (up to eos, then pad),
    ignoring stopping criteria, so HFPolicy's own cut decides where turns end."""

    training = False

    def __init__(self, plans: dict[tuple[int, ...], list[int]], tok: Any) -> None:
        self.plans, self.tok = plans, tok

    def eval(self) -> None:
        return None

    def train(self, mode: bool) -> None:
        return None

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = tuple(i for i, m in zip(ids, mask) if m)
            plan = self.plans[prompt][:max_new_tokens]
            if self.tok.eos_token_id in plan:
                plan = plan[: plan.index(self.tok.eos_token_id) + 1]
            rows.append(plan)
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long)
        return types.SimpleNamespace(sequences=torch.cat([input_ids, new], dim=1), past_key_values=None)


def test_turns_end_exactly_where_hfpolicy_ends_them(fake_vllm, tiny) -> None:
    _, tok = tiny
    texts = [
        '<query>{"query": "Holt founder"}</query> and then more text',           # stops at </query>
        '<search_complete>False</search_complete><query>{"query": "x"}</query> tail',  # paused, resumed
        "<think>ok</think><search_complete> TRUE </search_complete> extra words",  # true complete
        '<query>{"query": "y"}</QUERY> no stop string in this case',              # cut afterwards
        "no tag at all, the text just runs on and on past the token budget of the turn here",
    ]
    prompts = [_ids(tok, f"<question>q{i}</question>") for i in range(len(texts))]
    plans = {tuple(p): _ids(tok, t) for p, t in zip(prompts, texts)}
    ended = _ids(tok, "<think>done</think>") + [tok.eos_token_id] + _ids(tok, " junk")  # eos mid-plan
    prompts.append(_ids(tok, "<question>q-eos</question>"))
    plans[tuple(prompts[-1])] = ended
    fake_vllm.plans = plans
    cfg = CFG.model_copy(update={"max_prompt_tokens": 512})

    policy = VLLMPolicy("tiny-random", tok, cfg)
    got = policy.generate([list(p) for p in prompts])
    expected = HFPolicy(PlannedHFModel(plans, tok), tok, cfg).generate([list(p) for p in prompts])
    assert got == expected
    text = [tok.decode(g, skip_special_tokens=True) for g in got]
    assert text[0].endswith("</query>") and text[1].endswith("</query>") and text[3].endswith("</QUERY>")
    assert text[2].endswith("</search_complete>") and len(got[4]) == cfg.max_new_tokens
    assert got[5] == _ids(tok, "<think>done</think>")  # eos stripped, nothing after it

    # only the false <search_complete> row went back to the engine, with the rest of its budget
    assert policy.resumed_rows == 1 and len(policy.llm.calls) == 2
    (first_prompts, _), (resumed, params) = policy.llm.calls
    assert len(first_prompts) == 6 and len(resumed) == 1
    first_part = _ids(tok, "<search_complete>False</search_complete>")
    assert resumed[0] == prompts[1] + plans[tuple(prompts[1])][: len(resumed[0]) - len(prompts[1])]
    assert len(resumed[0]) - len(prompts[1]) >= len(first_part)
    assert params[0].kwargs["max_tokens"] == cfg.max_new_tokens - (len(resumed[0]) - len(prompts[1]))
    assert policy.stats.calls == 1 and policy.stats.sequences == 6
    assert policy.stats.tokens_generated == sum(len(g) for g in got)


def test_load_weights_sends_every_tensor_in_buckets(fake_vllm, tiny) -> None:
    _, tok = tiny
    policy = VLLMPolicy("tiny-random", tok, CFG, bucket_bytes=64)
    state = {"a.weight": torch.randn(4, 3), "b.weight": torch.randn(2, 2).to(torch.bfloat16),
             "c.bias": torch.randn(30), "d.scale": torch.tensor(2.5)}
    seconds = policy.load_weights(state)
    assert seconds >= 0 and policy.weight_syncs == 1 and policy.llm.prefix_resets == 1
    methods = [m for m, _, _ in policy.llm.rpc]
    assert methods[-1] == COMMIT_METHOD and set(methods[:-1]) == {STAGE_METHOD} and len(methods) > 2
    assert all(timeout is not None for _, timeout, _ in policy.llm.rpc)  # never waits forever
    (loaded,) = policy.llm.worker.loaded
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with pytest.raises(ValueError, match="empty state dict"):
        policy.load_weights({})
    assert policy.last_sync.kind == "weights" and policy.last_sync.tensors == 4
    assert policy.last_sync.nbytes == sum(t.numel() * t.element_size() for t in state.values())


def test_weight_loader_without_reload_weights_uses_model_load_weights() -> None:
    from s3_ray.agent.vllm_weights import pack_tensor

    got: dict[str, torch.Tensor] = {}
    model = types.SimpleNamespace(load_weights=lambda weights: got.update(weights))
    # an older worker: its reload_weights() re-reads the checkpoint and takes no weights
    worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(get_model=lambda: model),
                                   reload_weights=lambda: pytest.fail("must not reload from disk"))
    worker._s3_load = types.MethodType(WeightLoader._s3_load, worker)
    assert WeightLoader.s3_stage_weights(worker, [pack_tensor("w", torch.ones(2))]) == 1
    assert WeightLoader.s3_commit_weights(worker) == 1
    assert torch.equal(got["w"], torch.ones(2))
    with pytest.raises(RuntimeError, match="no staged weights"):
        WeightLoader.s3_commit_weights(worker)

    # vLLM 0.32's Worker.reload_weights(*args, **kwargs) forwards to the in-place reload
    calls: list[dict] = []
    worker.reload_weights = lambda *args, **kwargs: calls.append({**kwargs, "w": dict(kwargs["weights_iterator"])})
    WeightLoader.s3_stage_weights(worker, [pack_tensor("w", torch.zeros(3))])
    assert WeightLoader.s3_commit_weights(worker) == 1
    assert calls[0]["is_checkpoint_format"] is True and torch.equal(calls[0]["w"]["w"], torch.zeros(3))


class AlternatingScorer:
    """Rewards 1, 0, 1, 0, ...: every GRPO group of two has a gradient."""

    def score(self, trajs):
        return [RewardResult(float(i % 2 == 0)) for i in range(len(trajs))]


def test_transformers_backend_trains_without_an_engine(fake_vllm, tiny) -> None:
    import copy

    from s3_ray.rl.loop.trainer import SearcherTrainer

    base, tok = tiny
    scfg = CFG.model_copy(update={"backend": "transformers", "max_prompt_tokens": 1536, "max_new_tokens": 8})
    cfg = S3Config(searcher=scfg, train=TrainConfig(questions_per_step=1, group_size=2, kl_coef=0.0))
    items = [QAItem("q1", "Where does the river Wend flow?", ("Alder Town",))]
    trainer = SearcherTrainer(cfg, copy.deepcopy(base), None, tok, FakeRetriever(), AlternatingScorer(), items)
    metrics = trainer.train_step()
    assert fake_vllm.engines == [] and "time/weight_sync_s" not in metrics
    assert metrics["trajectories"] == 2.0
