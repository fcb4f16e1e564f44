"""Pushing the trained policy's weights into what samples the rollouts.

The policy being trained is not always what generates: a vLLM engine (`searcher.backend: vllm`)
holds its own copy of the weights, and an FSDP-sharded policy samples from an unsharded rollout
copy (`s3_ray.rl.model.policy`). Both must get the new weights after every change (an update, the
warm-up, a checkpoint load) and before the next rollout; `RolloutWeights` tracks whether they
are stale and pushes them once.

* `iter_policy_weights` streams the plain weights an engine loads, one tensor at a time: merged
  LoRA weights for a peft model, gathered weights for a sharded one, else the model's own
  tensors; the engine casts each to its dtype and sends it in buckets, so no whole second copy
  of the model ever exists on the trainer's side;
* with LoRA and `searcher.lora_push: adapter` the engine serves the adapter itself: it gets the
  base weights once (and again after a LoRA warm-up merged into the base), then only the
  adapter after every step (`s3_ray.rl.model.lora.write_adapter`);
* `refresh_copy` copies the policy into the rollout copy one gathered tensor at a time;
* around an update a vLLM engine sleeps (`release`, `searcher.vllm_sleep_level`) and the next
  `push` wakes it: weights first, loaded, then its KV cache. Full weights travel as the engine
  chose (`searcher.vllm_weight_transfer`: vLLM's own ipc / nccl transfer, or the streamed push),
  announced first by `policy_weight_meta`; the order around sleep is the same for both.

Every function that touches a sharded model is a collective: all ranks call it, in the same order.
"""

from __future__ import annotations

import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from s3_ray.config import SearcherConfig
from s3_ray.models import unwrap


def iter_policy_weights(model: Any) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of the plain model a rollout engine needs, one at a time, in state-dict
    order: merged LoRA weights for a peft model, each tensor of an FSDP-sharded one gathered as
    it is reached (a collective: every rank drains it), else the (DDP-unwrapped) model's own."""
    from s3_ray.rl.model.lora import is_lora, iter_merged_weights
    from s3_ray.rl.model.sharding import iter_full_state

    if is_lora(model):
        return iter_merged_weights(model)
    return iter_full_state(unwrap(model), cpu=False)


def policy_weight_meta(model: Any, base: bool = False) -> list[tuple[str, Any, tuple[int, ...]]]:
    """(name, dtype, shape) of what `iter_policy_weights` (with `base`: `iter_base_weights`) yields
    for `model`, in the same order, read without gathering or merging anything: the announcement
    vLLM's native transfer sends before the data. Merging an adapter changes a weight's values,
    not its name, dtype or shape; a shard reports its global shape."""
    from s3_ray.agent.vllm_native import weight_meta
    from s3_ray.rl.model.lora import is_lora, iter_base_weights

    if is_lora(model):
        return weight_meta(iter_base_weights(model))
    if base:
        raise ValueError(f"{type(unwrap(model)).__name__} carries no LoRA adapter: it has no base weights of their own")
    return weight_meta(unwrap(model).state_dict().items())


def refresh_copy(target_model: Any, model: Any) -> float:
    """Copy `model`'s (possibly sharded) weights into the unsharded `target_model`, one gathered
    tensor at a time (cast to the copy's dtype); returns seconds. Collective for a sharded `model`."""
    import torch

    from s3_ray.rl.model.sharding import iter_full_state

    t0 = time.perf_counter()
    target = target_model.state_dict()
    with torch.no_grad():
        for name, full in iter_full_state(unwrap(model), cpu=False):
            if name not in target:
                raise ValueError(f"rollout copy: {name} is not in the model")
            target[name].copy_(full)
    return time.perf_counter() - t0


class RolloutWeights:
    """Whether the rollout engine or copy holds the policy's current weights, and the push when not.

    `engine` is a vLLM `VLLMPolicy` (built by `start_engine` with the first rollout), `copy` an
    unsharded rollout model; with neither, rollouts sample from the policy itself and there is
    nothing to push.
    """

    def __init__(self, copy: Any = None) -> None:
        self.copy = copy
        self.engine: Any = None
        self.stale = True
        self._base: Any = None  # weakref to the peft model whose base weights the engine holds
        self._adapters: tempfile.TemporaryDirectory[str] | None = None

    @property
    def needed(self) -> bool:
        """Whether anything holds weights apart from the policy (an engine or a copy)."""
        return self.engine is not None or self.copy is not None

    @property
    def serves_adapters(self) -> bool:
        """Whether the engine applies the LoRA adapter itself (it gets adapters, not merged weights)."""
        return self.engine is not None and getattr(self.engine, "max_lora_rank", 0) > 0

    def mark_stale(self) -> None:
        """The policy's weights moved; the next `push` sends them."""
        self.stale = True

    def release(self) -> bool:
        """Put the vLLM engine to sleep before a policy update, so the update has its GPU memory
        (`searcher.vllm_sleep_level`); the next `push` wakes it. Level 2 drops the engine's
        weights too, so the push then sends full weights (the base as well, for a LoRA engine).
        False when there is no engine or it cannot sleep."""
        sleep = getattr(self.engine, "sleep", None)
        if not callable(sleep) or not sleep():
            return False
        if getattr(self.engine, "asleep", 0) >= 2:
            self.stale = True
            self._base = None
        return True

    def _wake(self, tags: list[str] | None) -> None:
        wake = getattr(self.engine, "wake_up", None)
        if callable(wake):
            wake(tags)

    def start_engine(self, model: Any, tokenizer: Any, searcher: SearcherConfig, seed: int) -> Any:
        """Build the vLLM engine on `model`'s device and load it with the policy's weights: the
        merged ones, or with `searcher.lora_push: adapter` the base (the adapter follows with the
        next `push`). Returns the engine. Collective for a sharded `model`."""
        from s3_ray.agent.policy import make_policy
        from s3_ray.rl.model.lora import is_lora, iter_base_weights

        adapters = is_lora(model) and searcher.lora_push == "adapter"
        weights = iter_base_weights(model) if adapters else iter_policy_weights(model)
        self.engine = make_policy(model, tokenizer, searcher, seed=seed, weights=weights,
                                  meta=policy_weight_meta(model, base=adapters))
        self._base = weakref.ref(unwrap(model)) if adapters else None
        self.stale = adapters  # merged: the engine holds the current weights; adapter: not sent yet
        return self.engine

    def push(self, model: Any) -> float:
        """Send `model`'s weights (or adapter) to the engine or copy if they are stale; returns
        seconds (0 when nothing was due). With a sharded policy this gathers its weights: every
        rank calls it."""
        if not self.stale or not self.needed:
            if self.engine is not None:
                self._wake(None)  # asleep since an update that changed nothing to send
            return 0.0
        if self.engine is None:
            seconds = refresh_copy(self.copy, model)
        else:
            self._wake(["weights"])  # the weights' memory back first; the KV cache once they are loaded
            seconds = self._push_adapter(model) if self.serves_adapters else \
                self.engine.load_weights(iter_policy_weights(model), meta=policy_weight_meta(model))
            self._wake(["kv_cache"])
        self.stale = False
        return seconds

    def _push_adapter(self, model: Any) -> float:
        """The adapter, after the base weights when they changed: a LoRA warm-up merges its adapter
        into the base and builds a new peft model around it (`SearcherPolicy.rebase_after_warmup`)."""
        import shutil

        from s3_ray.rl.model.lora import is_lora, iter_base_weights, write_adapter

        if not is_lora(model):
            raise ValueError("the vLLM engine serves LoRA adapters but the policy has none")
        t0 = time.perf_counter()
        bare = unwrap(model)
        if self._base is None or self._base() is not bare:
            self.engine.load_weights(iter_base_weights(model), meta=policy_weight_meta(model, base=True))
            self._base = weakref.ref(bare)
        if self._adapters is None:
            self._adapters = tempfile.TemporaryDirectory(prefix="s3-adapter-")
        root = Path(self._adapters.name)
        folder = root / f"push-{self.engine.weight_syncs + 1}"
        write_adapter(model, folder)
        self.engine.load_adapter(folder)
        for old in root.iterdir():  # vLLM may read only the current one again
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        return time.perf_counter() - t0
