"""The trainer's pushes into a (fake) vLLM engine: merged weights after every step, only the
adapter for a LoRA run, every tensor streamed in the engine's dtype and loaded layer by layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fake_vllm import install_fake_vllm, phases
from fakes import FakeRetriever
from s3_ray.config import S3Config, SearcherConfig, TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.model.weight_sync import iter_policy_weights
from s3_ray.types import QAItem, RewardResult

torch.set_num_threads(1)

CFG = SearcherConfig(model="tiny-random", max_new_tokens=24, temperature=0.7, top_p=0.9, max_prompt_tokens=1536,
                     backend="vllm", gpu_memory_utilization=0.3)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


@pytest.fixture
def fake_vllm(monkeypatch, tiny):
    return install_fake_vllm(monkeypatch, tiny[1])


def _ids(tok, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


class AlternatingScorer:
    """Rewards 1, 0, 1, 0, ...: every GRPO group of two has a gradient."""

    def score(self, trajs):
        return [RewardResult(float(i % 2 == 0)) for i in range(len(trajs))]


ITEMS = [QAItem("q1", "Where does the river Wend flow?", ("Alder Town",)),
         QAItem("q2", "Who founded the company?", ("Clara Holt",))]


def _trainer(fake_vllm, tiny, lora_rank: int, lora_push: str = "adapter", rank: int = 3):
    import copy

    from s3_ray.rl.model.policy import build_policy
    from s3_ray.rl.loop.trainer import SearcherTrainer

    base, tok = tiny
    fake_vllm.default_plan = _ids(tok, "<search_complete>True</search_complete>")
    train = TrainConfig(questions_per_step=2, group_size=2, kl_coef=0.0, lr=1e-2, lora_rank=lora_rank, micro_batch=4)
    cfg = S3Config(searcher=CFG.model_copy(update={"lora_push": lora_push}), train=train)
    model, ref = build_policy(copy.deepcopy(base), train)
    trainer = SearcherTrainer(cfg, model, ref, tok, FakeRetriever(), AlternatingScorer(), ITEMS, rank=rank)
    return trainer, model, cfg


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_trainer_pushes_updated_weights_into_the_engine(fake_vllm, tiny, lora_rank) -> None:
    from s3_ray.rl.model.lora import merged_state_dict

    trainer, model, cfg = _trainer(fake_vllm, tiny, lora_rank, lora_push="merged")
    assert fake_vllm.engines == []  # the engine starts with the first rollout

    metrics = trainer.train_step()
    (engine,) = fake_vllm.engines
    assert engine.kwargs["seed"] == cfg.seed + 3  # each Train worker samples differently
    assert "enable_lora" not in engine.kwargs and engine.lora_requests[0] is None
    before, after = engine.worker.loaded  # at engine start, then after the update
    now = merged_state_dict(model) if lora_rank else model.state_dict()
    assert after.keys() == now.keys() and all(torch.equal(after[k], v) for k, v in now.items())
    assert not any(".lora_" in k or ".base_layer." in k for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after)  # the step moved the weights
    assert metrics["time/weight_sync_s"] >= 0 and engine.prefix_resets == 2

    trainer.train_step()  # the same engine serves the next rollout, refreshed once more
    assert fake_vllm.engines == [engine] and len(engine.worker.loaded) == 3
    trainer.sync_rollout_weights()  # nothing changed since: no extra push
    assert len(engine.worker.loaded) == 3
    trainer.weights_changed()
    trainer.rollout(ITEMS[:1])
    assert len(engine.worker.loaded) == 4
    assert [n for n, _ in iter_policy_weights(model)] == list(after)


def test_lora_run_pushes_only_the_adapter(fake_vllm, tiny) -> None:
    from peft import get_peft_model_state_dict

    from s3_ray.rl.model.lora import iter_base_weights, merge_lora
    from s3_ray.rl.model.policy import build_policy

    trainer, model, _ = _trainer(fake_vllm, tiny, lora_rank=2)
    trainer.train_step()
    (engine,) = fake_vllm.engines
    # the engine serves LoRA (vLLM's smallest rank that holds 2) and took the base weights once
    assert engine.kwargs["enable_lora"] is True and engine.kwargs["max_lora_rank"] == 8
    (base,) = engine.worker.loaded
    assert base.keys() == dict(iter_base_weights(model)).keys()
    assert all(torch.equal(base[k], v) for k, v in iter_base_weights(model))
    # then one adapter at start and one after the update, each under a new id; the old one removed
    core = engine.llm_engine
    assert [r.lora_int_id for r in core.added] == [2, 3] and core.removed == [2]
    assert engine.lora_requests[0].lora_int_id == 2  # the first rollout already samples with the adapter
    want = {k: v for k, v in get_peft_model_state_dict(model).items()}
    assert core.adapter_weights[-1].keys() == want.keys()
    assert all(torch.equal(core.adapter_weights[-1][k], v) for k, v in want.items())
    assert any(not torch.equal(core.adapter_weights[0][k], v) for k, v in want.items())  # the step moved it

    trainer.train_step()  # rollouts of step 2 use the adapter of step 1
    assert engine.lora_requests[-1].lora_int_id == 3
    assert len(engine.worker.loaded) == 1 and len(core.added) == 3  # no full weights again
    assert Path(core.added[-1].lora_path).is_dir() and not Path(core.added[0].lora_path).exists()

    # a LoRA warm-up merges its adapter into the base and builds a new peft model: base again
    new_model, new_ref = build_policy(merge_lora(model), trainer.cfg.train)
    trainer.set_policy(new_model, new_ref)
    trainer.sync_rollout_weights()
    assert len(engine.worker.loaded) == 2 and len(core.added) == 4
    assert all(torch.equal(engine.worker.loaded[1][k], v) for k, v in iter_base_weights(new_model))


def _fp32_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_push_streams_one_bucket_at_a_time_in_the_engine_dtype(monkeypatch, tiny) -> None:
    """Each tensor is gathered only when its bucket is being filled, cast to the engine's bf16,
    and the worker loads whole layers as buckets arrive instead of staging the model."""
    import copy

    from s3_ray.agent.vllm_policy import VLLMPolicy
    from s3_ray.agent.vllm_weights import STAGE_METHOD, layer_key
    from s3_ray.rl.model import sharding
    from s3_ray.rl.model.weight_sync import RolloutWeights

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    vllm = install_fake_vllm(monkeypatch, tok, dtype=torch.bfloat16)
    events: list[str] = []
    real_gather = sharding.gather
    monkeypatch.setattr(sharding, "gather", lambda t: events.append("gather") or real_gather(t))
    engine = VLLMPolicy("tiny-random", tok, CFG, bucket_bytes=64 << 10)
    real_rpc = engine.llm.collective_rpc
    engine.llm.collective_rpc = lambda method, **kw: events.append(method) or real_rpc(method, **kw)
    weights = RolloutWeights()
    weights.engine = engine
    weights.push(model)

    stages = [i for i, e in enumerate(events) if e == STAGE_METHOD]
    tied = sharding.tied_names(model)  # gathered once, sent under both names
    assert len(stages) > 3 and events.count("gather") == len(model.state_dict()) - len(tied)
    # before each bucket went out, only its own tensors (and the one that did not fit) were gathered
    sizes = [n for method, _, n in vllm.engines[0].rpc if method == STAGE_METHOD]
    gathered = [events[a:b].count("gather") for a, b in zip([-1] + stages, stages)]
    assert all(g <= n + 1 for g, n in zip(gathered, sizes)), (gathered, sizes)

    (loaded,) = vllm.engines[0].worker.loaded
    assert {t.dtype for t in loaded.values()} == {torch.bfloat16}
    assert all(torch.equal(loaded[k], v.to(torch.bfloat16)) for k, v in model.state_dict().items())
    assert engine.last_sync.nbytes == _fp32_bytes(model) // 2

    # the worker loaded layer by layer: several reloads, no layer split over two of them
    reloads = vllm.engines[0].worker.reloads
    keys = [{layer_key(n) for n in names} for names in reloads]
    assert len(reloads) > 2 and all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    assert sorted(n for names in reloads for n in names) == sorted(model.state_dict())


def test_a_layer_split_across_the_stream_is_refused(monkeypatch, tiny) -> None:
    from s3_ray.agent.vllm_policy import VLLMPolicy

    install_fake_vllm(monkeypatch, tiny[1])
    engine = VLLMPolicy("tiny-random", tiny[1], CFG)
    out_of_order = [("model.layers.0.q.weight", torch.ones(1)), ("model.layers.1.q.weight", torch.ones(1)),
                    ("model.layers.0.k.weight", torch.ones(1))]
    with pytest.raises(ValueError, match=r"layer 'model.layers.0' are not contiguous: 'model.layers.0.k.weight'"):
        engine.load_weights(iter(out_of_order))


def test_worker_keeps_only_the_open_layer_between_buckets() -> None:
    import types

    from s3_ray.agent.vllm_weights import WeightLoader, pack_tensor

    loads: list[list[str]] = []
    worker = types.SimpleNamespace()
    worker._s3_load = lambda packed: loads.append([p[0] for p in packed]) or worker.__dict__.update(
        _s3_loaded=worker.__dict__.get("_s3_loaded", 0) + len(packed))
    bucket1 = [pack_tensor(n, torch.ones(1)) for n in ("embed.weight", "layers.0.q.weight", "layers.0.k.weight",
                                                       "layers.1.q.weight")]
    bucket2 = [pack_tensor(n, torch.ones(1)) for n in ("layers.1.k.weight", "norm.weight")]
    assert WeightLoader.s3_stage_weights(worker, bucket1) == 4
    assert loads == [["embed.weight", "layers.0.q.weight", "layers.0.k.weight"]]  # layer 1 is still open
    assert [p[0] for p in worker._s3_staged] == ["layers.1.q.weight"]
    WeightLoader.s3_stage_weights(worker, bucket2)
    assert loads[-1] == ["layers.1.q.weight", "layers.1.k.weight"]
    assert WeightLoader.s3_commit_weights(worker) == 6 and loads[-1] == ["norm.weight"]


def test_engine_sleeps_through_every_update_and_wakes_before_the_next_rollout(fake_vllm, tiny) -> None:
    trainer, _, _ = _trainer(fake_vllm, tiny, lora_rank=0, lora_push="merged")
    trainer.train_step()
    trainer.train_step()
    (engine,) = fake_vllm.engines
    assert engine.kwargs["enable_sleep_mode"] is True
    stage, commit = "rpc:s3_stage_weights", "rpc:s3_commit_weights"
    start = [stage, commit]  # the weights the engine starts with
    step = ["generate", "sleep:1", "wake:weights", stage, commit, "wake:kv_cache"]
    assert phases(engine.events) == start + step + step
    assert not engine.sleeping


def test_sleep_level_two_and_off(fake_vllm, tiny) -> None:
    trainer, _, cfg = _trainer(fake_vllm, tiny, lora_rank=2)  # LoRA: the adapter only, unless the base was dropped
    trainer.cfg = cfg.model_copy(update={"searcher": cfg.searcher.model_copy(update={"vllm_sleep_level": 2})})
    trainer.train_step()
    (engine,) = fake_vllm.engines
    assert "sleep:2" in engine.events and len(engine.worker.loaded) == 2  # level 2 dropped the base: sent again
    off = cfg.model_copy(update={"searcher": cfg.searcher.model_copy(update={"vllm_sleep_level": 0})})
    trainer2, _, _ = _trainer(fake_vllm, tiny, lora_rank=0, lora_push="merged")
    trainer2.cfg = off
    trainer2.train_step()
    engine2 = fake_vllm.engines[-1]
    assert "enable_sleep_mode" not in engine2.kwargs and not any(e.startswith(("sleep", "wake")) for e in engine2.events)
    assert SearcherConfig().vllm_sleep_level == 1
