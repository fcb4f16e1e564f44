"""Pushing the trained policy's weights into what samples the rollouts.

The policy being trained is not always what generates: a vLLM engine (`searcher.backend: vllm`)
holds its own copy of the weights, and an FSDP-sharded policy samples from an unsharded rollout
copy (`s3_ray.rl.policy`). Both must get the new weights after every change (an update, the
warm-up, a checkpoint load) and before the next rollout; `RolloutWeights` tracks whether they
are stale and pushes them once.

* `policy_state_dict` gives the plain weights an engine loads: merged LoRA weights for a peft
  model, gathered weights for a sharded one, else the model's own state dict;
* `refresh_copy` copies the policy into the rollout copy one gathered tensor at a time.

Every function that touches a sharded model is a collective: all ranks call it, in the same order.
"""

from __future__ import annotations

import time
from typing import Any

from s3_ray.models import unwrap


def policy_state_dict(model: Any) -> dict[str, Any]:
    """The plain-model weights a rollout engine needs: merged LoRA weights for a peft model, the
    gathered weights of an FSDP-sharded one (a collective: every rank calls it), else the
    (DDP-unwrapped) model's own state dict."""
    from s3_ray.rl.lora import is_lora, merged_state_dict
    from s3_ray.rl.sharding import full_state_dict, is_sharded

    if is_lora(model):
        return merged_state_dict(model)
    bare = unwrap(model)
    if is_sharded(bare):
        return full_state_dict(bare, cpu=False)
    return bare.state_dict()


def refresh_copy(target_model: Any, model: Any) -> float:
    """Copy `model`'s (possibly sharded) weights into the unsharded `target_model`, one gathered
    tensor at a time; returns seconds. Collective for a sharded `model`."""
    import torch

    from s3_ray.rl.sharding import iter_full_state

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

    `engine` is a vLLM `VLLMPolicy` (set once it is built), `copy` an unsharded rollout model; with
    neither, rollouts sample from the policy itself and there is nothing to push.
    """

    def __init__(self, copy: Any = None) -> None:
        self.copy = copy
        self.engine: Any = None
        self.stale = True

    @property
    def needed(self) -> bool:
        """Whether anything holds weights apart from the policy (an engine or a copy)."""
        return self.engine is not None or self.copy is not None

    def mark_stale(self) -> None:
        """The policy's weights moved; the next `push` sends them."""
        self.stale = True

    def attach_engine(self, engine: Any) -> None:
        """A freshly built engine, loaded with the current weights."""
        self.engine = engine
        self.stale = False

    def push(self, model: Any) -> float:
        """Send `model`'s weights to the engine or copy if they are stale; returns seconds (0 when
        nothing was due). With a sharded policy this gathers its weights: every rank calls it."""
        if not self.stale or not self.needed:
            return 0.0
        if self.engine is not None:
            seconds = self.engine.load_weights(policy_state_dict(model))
        else:
            seconds = refresh_copy(self.copy, model)
        self.stale = False
        return seconds
