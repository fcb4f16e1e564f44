"""The training worker's memory, measured by running one real update step without its memory.

`measure_step(spec)` builds the searcher's model from its config (no weights), wraps it the way
`SearcherPolicy` does (LoRA, KL reference, FSDP2 sharding, rollout copy), and runs one
`PolicyUpdater.step` on synthetic trajectories of the configured lengths, under
`torch.distributed._tools.mem_tracker.MemTracker` (`FSDPMemTracker` for a sharded policy), which
reports the peak by category. With `fake` the model's tensors are `FakeTensorMode` tensors: every
shape and dtype is real, nothing is allocated, so a 7B step runs on a laptop. Several workers run
as rank 0 of a fake process group (`FakeStore`, backend "fake"): FSDP shards as it would.

The host side of the update (padding, masks, advantages) runs on real tensors, so its control
flow is the real one; tensors reached from the model are fake, and the few data-dependent reads of
them (`.item()` of a loss) get a placeholder value.

GPU semantics without a GPU: a fake CUDA tensor cannot run a backward on a CPU-only build of torch
(the autograd engine asks for a CUDA device guard), so a `gpu` step runs fake CPU tensors with
the precision a GPU worker uses: fp32 master weights, bf16 frozen copies (`precision_for("cuda")`),
bf16 autocast, and FSDP's bf16 mixed precision.

Run it as `python -m s3_ray.rl.algo.memory_step < spec.json` (the plan does, in a subprocess, so
the fake process group never leaks into the caller); it prints one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any

import torch
from torch.utils import _pytree as pytree

GIB = 1024**3
_WEIGHTS = ("Parameter", "Buffer", "Sharded Param", "Unsharded Param", "All Gather")
_GRADS = ("Gradient", "Sharded Grad", "Unsharded Grad", "Reduce Scatter")
_OPT = ("Optstate", "OptState")


def _hybrid_mode() -> Any:
    """A FakeTensorMode whose ops on real tensors only (the host-side bookkeeping) run for real."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    class HybridFakeMode(FakeTensorMode):
        host_real = False  # off while the model is built: its parameters must all be fake

        def dispatch(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            leaves = pytree.arg_tree_leaves(*args, **kwargs)
            fake = any(isinstance(t, FakeTensor) for t in leaves)
            if fake and func is torch.ops.aten._local_scalar_dense.default:
                t = args[0]  # a value read from the model's outputs: a placeholder keeps the step going
                return False if t.dtype == torch.bool else (1.0 if t.is_floating_point() else 1)
            if not fake and any(isinstance(t, torch.Tensor) for t in leaves):
                return func(*args, **kwargs)  # host bookkeeping on real tensors
            out = super().dispatch(func, types, args, kwargs)
            if fake:
                return out
            # a factory op: real when it is small host data (ids, masks, a device mesh), else fake
            outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            small = sum(t.numel() * t.element_size() for t in outs) <= (8 << 20)
            integral = all(not t.is_floating_point() for t in outs)
            return func(*args, **kwargs) if small and (self.host_real or integral) else out

    return HybridFakeMode(allow_non_fake_inputs=True)


def _tracker_class(fsdp: bool) -> type:
    """MemTracker (or FSDPMemTracker) that also knows which share of its peak is logits (tensors
    whose last dimension is the vocabulary) and allows several forwards of one model per step."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
    from torch.utils.weak import WeakIdKeyDictionary

    base = FSDPMemTracker if fsdp else MemTracker

    class Tracker(base):  # type: ignore[misc, valid-type]
        vocab = 0

        def _logit_storages(self) -> Any:
            if not hasattr(self, "_logits"):
                self._logits = WeakIdKeyDictionary()
                self.logits_at_peak = 0
            return self._logits

        def _track(self, reftype: Any, t: torch.Tensor) -> None:
            super()._track(reftype, t)
            if t.dim() >= 2 and t.shape[-1] == self.vocab:
                self._logit_storages()[t.untyped_storage()] = True

        def _update_peak_stats(self, peak_state: Any) -> None:
            # the global peak only: the per-module peaks cost a pass over every module per op
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)
                    self.logits_at_peak = sum(st.nbytes() for st in list(self._logit_storages().keys()))

        def _pre_fw_hook(self, module: Any, inputs: Any) -> None:
            # the policy runs several top-level forwards per step (old policy, update): each starts
            # fresh module statistics; the global peak is kept
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                name = self._mod_tracker.get_known_fqn(module)
                if set(self._mod_tracker.parents) - {name} == {"Global"}:
                    del self.memory_tracking[module]
            super()._pre_fw_hook(module, inputs)

        def _fsdp_state_pre_forward(self, fsdp_mod: Any, orig: Any) -> Any:
            inner = super()._fsdp_state_pre_forward(fsdp_mod, orig)

            def again(*args: Any, **kwargs: Any) -> Any:  # as `_pre_fw_hook`, for FSDP's own hooks
                if fsdp_mod in self.memory_tracking and not self._mod_tracker.is_bw:
                    name = self._mod_tracker.get_known_fqn(fsdp_mod)
                    if set(self._mod_tracker.parents) - {name} == {"Global"}:
                        del self.memory_tracking[fsdp_mod]
                return inner(*args, **kwargs)

            return again

        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True) -> tuple[int, int]:
            # frozen modules (the KL reference) take no gradient hooks
            params = buffers = 0
            for p in module.parameters():
                params += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(p, _MemRefType.PARAM))
                if p.requires_grad and install_grad_hooks and self._param_to_grad_hook_handles.get(p) is None:
                    def hook(grad: torch.Tensor) -> None:
                        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)
                    self._param_to_grad_hook_handles[p] = (
                        p.register_hook(hook), p.register_post_accumulate_grad_hook(lambda q: hook(q.grad)))
            for b in module.buffers():
                buffers += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(b, _MemRefType.BUFFER))
            return params, buffers

    return Tracker


def _materialise(plain: torch.nn.Module) -> None:
    """Give a meta-device model (fake) storage on the CPU, parameter by parameter (ties kept)."""
    memo: dict[int, Any] = {}
    for module in plain.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
                module._parameters[name] = memo[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = torch.zeros(b.shape, dtype=b.dtype)
                module._buffers[name] = memo[id(b)]


def build_model(shape: dict[str, Any], fake: bool, seed: int = 0) -> torch.nn.Module:
    """The plain HF causal LM of `shape` in fp32 (fake: no storage; else randomly initialised)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in shape.items() if k not in ("model_type", "architectures", "transformers_version")}
    config = AutoConfig.for_model(shape["model_type"], **fields)
    if not fake:
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    _materialise(plain)
    return plain


def synthetic_trajectories(rows: int, group_size: int, prompt: int, segments: list[tuple[int, int]],
                           vocab: int) -> list[Any]:
    """`rows` trajectories of one length: a `prompt` shared within each group, then the response
    `segments` as (tokens, loss mask) pairs (searcher turns 1, documents 0); rewards alternate."""
    from s3_ray.types import QAItem, Trajectory

    out = []
    for i in range(rows):
        group = i // max(1, group_size)
        ids = [3 + (group * 7919 + j) % (vocab - 3) for j in range(prompt)]
        response: list[int] = []
        mask: list[int] = []
        for n, m in segments:
            response += [3 + (i * 104729 + len(response) + j) % (vocab - 3) for j in range(n)]
            mask += [m] * n
        out.append(Trajectory(QAItem(f"q{group}", "?", ("a",)), ids, response, mask, reward=float(i % 2)))
    return out


@contextlib.contextmanager
def _gpu_semantics() -> Any:
    """bf16 autocast and FSDP bf16 mixed precision on (fake) CPU tensors, as a GPU worker runs."""
    from s3_ray.rl.model import precision, sharding

    original = sharding.shard_model

    def shard_model(model: Any, *, mixed_precision: bool | None = None, trainable: bool = True, **kw: Any) -> Any:
        return original(model, mixed_precision=True if mixed_precision is None else mixed_precision,
                        trainable=trainable, **kw)

    previous = precision._cpu_compute
    precision.configure_cpu_compute("bf16")
    sharding.shard_model = shard_model
    try:
        yield
    finally:
        sharding.shard_model = original
        precision.configure_cpu_compute(previous)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """AdamW's moments as they exist from the second step on (the first step creates them after
    its backward, so its peak alone would miss them)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _storage_bytes(*modules: Any) -> int:
    """Bytes of the distinct local storages of the modules' parameters and buffers (shards: local)."""
    seen: dict[int, int] = {}
    for module in modules:
        if module is None:
            continue
        for t in [*module.parameters(), *module.buffers()]:
            local = t.to_local() if hasattr(t, "to_local") else t
            st = local.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())


def _build_sharded(policy: Any, plain: Any) -> None:
    """The FSDP policy from the (fake) model `plain` with what `SearcherPolicy._load_sharded` keeps
    beside it: the KL reference sharded like the policy, and an unsharded rollout copy for the
    transformers backend, both in the frozen dtype. (The copies are cast from `plain` before it is
    sharded rather than materialised from the meta device, which fake tensors cannot swap into.)"""
    from s3_ray.rl.model.policy import frozen_copy, shard_for_training

    frozen = policy.precision.frozen
    ref = frozen_copy(plain, frozen) if policy.cfg.train.kl_coef > 0 else None
    if policy.cfg.searcher.backend == "transformers":
        policy.rollout_copy = frozen_copy(plain, frozen)
    policy.model, policy.ref = shard_for_training(plain, ref)


def measure_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one update step of one training worker (rank 0), in bytes by part.

    `spec`: `config` (an S3Config dump), `shape` (model config dict), `rows`, `prompt_tokens`,
    `segments`, `fake` (bool), `gpu` (GPU precision semantics).
    """
    from s3_ray.config import S3Config
    from s3_ray.rl.algo.update import PolicyUpdater
    from s3_ray.rl.model.policy import SearcherPolicy, enable_gradient_checkpointing
    from s3_ray.rl.model.precision import configure_cpu_compute, precision_for

    cfg = S3Config.model_validate(spec["config"])
    tc = cfg.train
    fsdp = tc.parallel == "fsdp" and tc.num_workers > 1
    world = tc.num_workers if fsdp else 1  # DDP: one worker's memory plus its gradient buckets
    if fsdp:
        import torch.distributed as dist
        from torch.testing._internal.distributed.fake_pg import FakeStore

        if spec["fake"]:
            dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    mode = _hybrid_mode() if spec["fake"] else None
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if spec["gpu"]:
            stack.enter_context(_gpu_semantics())
        else:
            configure_cpu_compute(tc.cpu_compute)
        if mode is not None:
            stack.enter_context(mode)
        plain = build_model(spec["shape"], fake=spec["fake"])
        plain.train(True)
        if tc.gradient_checkpointing:
            enable_gradient_checkpointing(plain)
        policy = SearcherPolicy(cfg, None, None, None, world=world, rank=0,
                                precision=precision_for("cuda" if spec["gpu"] else "cpu"))
        if mode is not None:
            mode.host_real = True
        if fsdp:  # as `SearcherPolicy._load_sharded` builds it
            _build_sharded(policy, plain)
        else:
            policy._build(plain)
        updater = PolicyUpdater(policy.model, policy.ref, tc, pad_id=0, temperature=max(cfg.searcher.temperature, 1e-3))
        vocab = int(spec["shape"]["vocab_size"])
        trajectories = synthetic_trajectories(spec["rows"], tc.group_size, spec["prompt_tokens"],
                                              [tuple(s) for s in spec["segments"]], vocab)
        resident = {"reference": _storage_bytes(policy.ref) if tc.lora_rank == 0 else 0,
                    "rollout_copy": _storage_bytes(policy.rollout_copy)}
        init_optimizer_state(updater.optimizer)
        tracker = _tracker_class(fsdp)(policy.model, updater.optimizer) if fsdp else _tracker_class(False)()
        tracker.vocab = vocab
        if not fsdp:
            tracker.track_external(*[m for m in (policy.model, policy.ref, policy.rollout_copy, updater.value_head)
                                     if m is not None], updater.optimizer)
        with tracker:
            if fsdp:  # FSDPMemTracker tracks optimizer state from its first step on: the moments exist already
                from torch.distributed._tools.fsdp2_mem_tracker import _FSDPRefType

                tracker._track_optimizer_states(_FSDPRefType.OPT, updater.optimizer)
            metrics = updater.step(trajectories)
    snapshot = {str(getattr(k, "value", k)): v for k, v in next(iter(tracker._peak_mem_snap.values()), {}).items()}
    peak = int(snapshot.get("Total", 0))
    parts = {"weights": sum(snapshot.get(k, 0) for k in _WEIGHTS), "gradients": sum(snapshot.get(k, 0) for k in _GRADS),
             "optimizer": sum(snapshot.get(k, 0) for k in _OPT), "logits": int(getattr(tracker, "logits_at_peak", 0))}
    parts["activations"] = max(0, peak - sum(parts.values()))
    if fsdp:  # FSDPMemTracker follows the policy only: the frozen copies stay resident beside it
        peak += resident["reference"] + resident["rollout_copy"]
    else:  # tracked as parameters above: reported as their own actors
        parts["weights"] -= resident["reference"] + resident["rollout_copy"]
    if tc.num_workers > 1 and not fsdp:  # DDP's gradient buckets: a second copy of the gradients
        ddp = sum(p.numel() * p.element_size() for p in updater.policy_params)
        parts["gradients"] += ddp
        peak += ddp
    return {"peak": peak, "parts": parts, **resident, "seconds": round(time.perf_counter() - started, 2),
            "world": world, "fake": spec["fake"], "gpu": spec["gpu"],
            "update_skipped": metrics.get("update_skipped", 0.0)}


def main() -> int:
    spec = json.load(sys.stdin)
    result = measure_step(spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
