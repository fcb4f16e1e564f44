"""fp32 master weights with bf16 autocast on a GPU (DDP and FSDP alike), bf16 frozen copies, and
why: a 1e-6 AdamW step survives in fp32 weights, not in bf16. CUDA is faked where a GPU decides."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch

from s3_ray.config import S3Config, SearcherConfig, TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.algo import batch as batch_module
from s3_ray.rl.loop import warmup as warmup_module
from s3_ray.rl.model.policy import SearcherPolicy, frozen_copy
from s3_ray.rl.model.precision import training_autocast
from s3_ray.rl.algo.update import PolicyUpdater
from s3_ray.types import QAItem, Trajectory

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


def test_a_1e6_step_survives_in_fp32_masters_but_not_in_bf16() -> None:
    """One real AdamW step at the paper's lr on weights of ordinary size (~0.02-0.1): its ~1e-6
    moves are below bf16's resolution there and vanish; fp32 master weights keep them, also when
    the forward computes in bf16 under autocast (CPU autocast here, CUDA's on a GPU)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 64), torch.randn(16, 64)

    def step(dtype: torch.dtype, autocast: bool) -> float:
        torch.manual_seed(1)
        lin = torch.nn.Linear(64, 64).to(dtype)
        before = lin.weight.detach().clone()
        opt = torch.optim.AdamW(lin.parameters(), lr=1e-6, weight_decay=0.0)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            loss = ((lin(x.to(dtype)) - y.to(dtype)) ** 2).mean()
        loss.float().backward()
        opt.step()
        return (lin.weight.detach() != before).float().mean().item()

    assert step(torch.float32, autocast=True) > 0.99   # every weight moved
    assert step(torch.float32, autocast=False) > 0.99
    assert step(torch.bfloat16, autocast=False) < 0.01  # the update was rounded away


class _Recorder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def test_training_autocast_is_bf16_on_cuda_and_off_on_cpu(monkeypatch) -> None:
    made: list[_Recorder] = []
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: made.append(_Recorder(*a, **k)) or made[-1])
    assert training_autocast(torch.device("cuda", 3)) is made[0]
    assert made[0].args == ("cuda",) and made[0].kwargs == {"dtype": torch.bfloat16}
    assert isinstance(training_autocast(torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(training_autocast(None), contextlib.nullcontext) and len(made) == 1


def _traj(tok: Any, reward: float) -> Trajectory:
    prompt = list(tok.encode("<question>who founded the company?</question>", add_special_tokens=False))
    resp = list(tok.encode('<query>{"query": "founder"}</query>', add_special_tokens=False))
    return Trajectory(QAItem("q", "who?", ("x",)), prompt, resp, [1] * len(resp), reward=reward)


def test_every_training_forward_runs_under_training_autocast(monkeypatch, tiny) -> None:
    """Policy, old policy and reference forwards of an update, and the warm-up's, all happen
    inside the context `training_autocast` gives for the model's device."""
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    inside: list[bool] = []
    devices: list[Any] = []

    @contextlib.contextmanager
    def recording(device: Any):
        devices.append(device)
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    monkeypatch.setattr(batch_module, "training_autocast", recording)  # the warm-up scores through batch too
    seen: list[tuple[str, bool]] = []
    for name, m in (("policy", model), ("reference", ref)):
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, bool(inside))))

    up = PolicyUpdater(model, ref, TrainConfig(lr=1e-3, kl_coef=0.1), pad_id=tok.pad_token_id)
    up.step([_traj(tok, 1.0), _traj(tok, 0.0)])
    assert {n for n, _ in seen} == {"policy", "reference"} and all(ok for _, ok in seen), seen

    seen.clear()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    warmup_module.sft_step(model, tok, [_traj(tok, 0.0).prompt_ids], ["<search_complete>True</search_complete>"], opt)
    assert seen == [("policy", True)]
    assert all(d == torch.device("cpu") for d in devices)


class _FakeCudaLoad:
    """`from_pretrained` with CUDA faked: the real tiny model, whose `.to()` records calls."""

    def __init__(self, model: Any) -> None:
        self.model, self.kwargs, self.to_calls = model, {}, []

    def __call__(self, path: str, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        model = copy.deepcopy(self.model)
        model.to = lambda *a, **k: (self.to_calls.append((a, k)), model)[1]
        return model


def _load_on_fake_gpu(monkeypatch, tiny, **train: Any) -> tuple[SearcherPolicy, _FakeCudaLoad]:
    import transformers

    from s3_ray.models import registry

    fake = _FakeCudaLoad(tiny[0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(registry, "flash_attention_available", lambda: True)  # a GPU with flash_attn
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    cfg = S3Config(searcher=SearcherConfig(model="tiny-random"), train=TrainConfig(**train))
    return SearcherPolicy.load(cfg, device=torch.device("cuda", 1)), fake


def _dtypes(model: Any) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def test_ddp_on_a_gpu_trains_fp32_masters_against_a_bf16_reference(monkeypatch, tiny) -> None:
    policy, fake = _load_on_fake_gpu(monkeypatch, tiny, kl_coef=0.01)
    assert fake.kwargs["dtype"] == torch.float32  # not the bf16 a GPU load defaults to
    assert fake.kwargs["attn_implementation"] == "sdpa"  # FlashAttention-2 refuses fp32 weights
    assert fake.to_calls == [((torch.device("cuda", 1),), {})]
    assert _dtypes(policy.model) == {torch.float32} and policy.model.training
    assert _dtypes(policy.ref) == {torch.bfloat16} and not any(p.requires_grad for p in policy.ref.parameters())
    assert policy.precision.compute == torch.bfloat16

    lora, _ = _load_on_fake_gpu(monkeypatch, tiny, kl_coef=0.01, lora_rank=2)
    trained = {p.dtype for p in lora.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in lora.model.parameters() if not p.requires_grad}
    assert trained == {torch.float32}  # the adapter's master weights
    assert frozen == {torch.bfloat16}  # the base never takes an update: half the bytes on a GPU
    assert all(b.dtype == torch.float32 for n, b in lora.model.named_buffers() if "inv_freq" in n)


def test_a_lora_base_stays_fp32_on_cpu_and_bf16_base_still_trains_its_adapter(tiny) -> None:
    from s3_ray.rl.model.lora import apply_lora

    cpu = apply_lora(copy.deepcopy(tiny[0]), TrainConfig(lora_rank=2))
    assert _dtypes(cpu) == {torch.float32}
    gpu_like = apply_lora(copy.deepcopy(tiny[0]), TrainConfig(lora_rank=2), base_dtype=torch.bfloat16)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what training_autocast gives on a GPU
        loss = gpu_like(input_ids=ids, use_cache=False).logits.float().logsumexp(-1).sum()
    loss.backward()
    grads = [p.grad for n, p in gpu_like.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_tf32_is_enabled_on_cuda_only(monkeypatch, tiny) -> None:
    from s3_ray.models.autocast import enable_tf32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    try:
        matmul.fp32_precision = "ieee"
        assert not enable_tf32("cpu") and matmul.fp32_precision == "ieee"
        cfg = S3Config(searcher=SearcherConfig(model="tiny-random"), train=TrainConfig(kl_coef=0.0))
        SearcherPolicy.load(cfg, device="cpu")
        assert matmul.fp32_precision == "ieee"  # CPU runs change nothing
        _load_on_fake_gpu(monkeypatch, tiny)
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_rollouts_generate_under_bf16_autocast_on_cuda_and_without_on_cpu(monkeypatch, tiny) -> None:
    """The decision is a function of the device; HFPolicy's prefill and generate run inside it."""
    from s3_ray.agent import policy as agent_policy
    from s3_ray.models.autocast import inference_autocast, inference_compute

    assert inference_compute(torch.device("cuda", 2)) == torch.bfloat16
    assert inference_compute("cpu") is None and isinstance(inference_autocast("cpu"), contextlib.nullcontext)
    made: list[_Recorder] = []
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: made.append(_Recorder(*a, **k)) or made[-1])
    assert inference_autocast(torch.device("cuda", 2)) is made[0]
    assert made[0].args == ("cuda",) and made[0].kwargs == {"dtype": torch.bfloat16}
    monkeypatch.setattr(torch, "autocast", real_autocast)

    inside: list[Any] = []
    entered: list[Any] = []

    @contextlib.contextmanager
    def recording(device: Any):
        entered.append(device)
        inside.append(device)
        try:
            yield
        finally:
            inside.pop()

    monkeypatch.setattr(agent_policy, "inference_autocast", recording)
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    calls: list[bool] = []
    real_generate = model.generate
    model.generate = lambda *a, **k: (calls.append(bool(inside)), real_generate(*a, **k))[1]
    policy = agent_policy.HFPolicy(model, tok, SearcherConfig(model="tiny-random", max_new_tokens=4))
    prompt = list(tok.encode("<question>who?</question>", add_special_tokens=False))
    policy.generate([prompt, prompt])  # a shared prompt: the prefill runs too
    assert calls == [True] and entered and all(d == torch.device("cpu") for d in entered)


def test_cpu_stays_fp32_everywhere(tiny) -> None:
    cfg = S3Config(searcher=SearcherConfig(model="tiny-random"), train=TrainConfig(kl_coef=0.01))
    policy = SearcherPolicy.load(cfg, device="cpu")
    assert _dtypes(policy.model) == _dtypes(policy.ref) == {torch.float32} and policy.precision.compute is None


def test_frozen_copy_casts_tensor_by_tensor_and_keeps_ties(tiny) -> None:
    model = copy.deepcopy(tiny[0])
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = frozen_copy(model, torch.bfloat16)
    assert out.lm_head.weight is out.model.embed_tokens.weight  # still one tensor
    assert _dtypes(out) == {torch.bfloat16} and _dtypes(model) == {torch.float32}
    assert not out.training and not any(p.requires_grad for p in out.parameters())
    for (name, a), b in zip(model.state_dict().items(), out.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16), b), name
        assert a.data_ptr() != b.data_ptr(), name  # a copy, not a view of the trained weights
    same = frozen_copy(model)
    assert _dtypes(same) == {torch.float32}
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.parameters(), same.parameters()))
    buffers, originals = dict(out.named_buffers()), dict(model.named_buffers())
    rotary = [n for n in buffers if "inv_freq" in n]
    assert rotary and all(buffers[n].dtype == torch.float32 and torch.equal(buffers[n], originals[n]) for n in rotary)


def _rss_kib(field: str) -> int:
    from pathlib import Path

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_growth(build: Any) -> float:
    """Peak resident memory while `build()` runs, above what was resident before, in MiB."""
    from pathlib import Path

    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before = _rss_kib("VmRSS")
    kept = build()
    peak = _rss_kib("VmHWM")
    del kept
    return (peak - before) / 1024


def _peak_child() -> None:
    """In a fresh interpreter: a 128 MiB fp32 model copied to bf16, new way and the deep-copy way."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(8)])
    fp32_mib = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    streamed = _peak_growth(lambda: frozen_copy(model, torch.bfloat16)) / fp32_mib
    deep = _peak_growth(lambda: copy.deepcopy(model).to(torch.bfloat16)) / fp32_mib
    print(f"PEAK streamed={streamed:.2f} deepcopy={deep:.2f} (x the fp32 model)")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_frozen_copy_peaks_at_the_bf16_copy_not_a_second_fp32_model() -> None:
    from isolated import run_isolated

    out = run_isolated(__file__, "_peak_child()", "PEAK", timeout=300)
    line = next(x for x in out.splitlines() if x.startswith("PEAK"))
    streamed, deep = (float(part.split("=")[1]) for part in line.split()[1:3])
    assert deep > 0.9, line  # the measurement sees a deep copy's fp32 model
    assert streamed < 0.7, line  # the bf16 copy (0.5) plus at most one fp32 tensor in flight


@pytest.fixture()
def cpu_compute():
    """Sets this process's `train.cpu_compute` for one test and restores fp32 after it."""
    from s3_ray.rl.model import precision

    yield precision.configure_cpu_compute
    precision.configure_cpu_compute("fp32")


def test_cpu_bf16_autocast_log_probs_agree_with_fp32_and_masters_stay_fp32(cpu_compute, tiny) -> None:
    """`train.cpu_compute=bf16` on CPU: the update's log-probs (what the PPO ratio divides) stay within
    0.05 nats per token of fp32's, the weights it trains stay float32 and the step moves them."""
    from s3_ray.rl.algo.batch import collate, token_logprobs
    from s3_ray.rl.model.precision import precision_for

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    torch.manual_seed(0)
    for p in model.parameters():  # weights of a trained model's size, so the log-probs are not uniform
        p.data.normal_(0.0, 0.1)
    trajs = [_traj(tok, 1.0), _traj(tok, 0.0)]
    batch = collate(trajs, tok.pad_token_id)
    mask = batch.loss_mask.bool()
    assert cpu_compute("fp32") == "fp32" and precision_for("cpu").compute is None
    fp32 = token_logprobs(model, batch)[mask]
    assert cpu_compute("bf16") == "bf16" and precision_for("cpu").compute is torch.bfloat16
    assert isinstance(training_autocast(torch.device("cpu")), torch.autocast)
    bf16 = token_logprobs(model, batch)[mask]
    assert bf16.dtype == torch.float32  # the log-softmax runs in fp32 on upcast logits
    diff = (bf16 - fp32).abs()
    assert 0 < diff.max().item() < 0.05, diff
    before = [p.detach().clone() for p in model.parameters()]
    PolicyUpdater(model, None, TrainConfig(lr=1e-3, kl_coef=0.0), pad_id=tok.pad_token_id).step(trajs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any((p.detach() != b).any() for p, b in zip(model.parameters(), before))


def test_cpu_compute_auto_follows_the_cpu(cpu_compute, monkeypatch) -> None:
    from s3_ray.rl.model import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert cpu_compute("auto") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert cpu_compute("auto") == "fp32"
