"""Memory-related set-up of the policy being trained (kept apart from the RL maths)."""

from __future__ import annotations

import copy
from typing import Any

from s3_ray.config import TrainConfig


def build_policy(plain: Any, tc: TrainConfig) -> tuple[Any, Any]:
    """(policy, KL reference or None) around a plain HF model: with LoRA the reference is the
    policy with its adapter off (no second copy of the weights), otherwise a frozen deep copy."""
    from s3_ray.rl.lora import AdapterOffReference, apply_lora

    policy = apply_lora(plain, tc) if tc.lora_rank > 0 else plain
    ref = None
    if tc.kl_coef > 0:
        ref = AdapterOffReference(policy) if tc.lora_rank > 0 else copy.deepcopy(plain).eval().requires_grad_(False)
    return policy, ref


def inference_copy(plain: Any) -> Any:
    """A frozen, unsharded copy of `plain` for rollouts while the trained policy is FSDP-sharded
    (bf16 on a GPU); the trainer refreshes its weights after every update."""
    import torch

    out = copy.deepcopy(plain).eval().requires_grad_(False)
    if next(out.parameters()).device.type == "cuda":
        out = out.to(torch.bfloat16)
    return out


def shard_for_training(policy: Any, ref: Any) -> tuple[Any, Any]:
    """FSDP-shard the policy and its frozen KL reference in place (`train.parallel: fsdp`)."""
    from s3_ray.rl.sharding import shard_model

    shard_model(policy)
    if ref is not None:
        shard_model(ref, trainable=False)
    return policy, ref


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass instead of keeping them (less memory, slower).

    Every training forward of this package already passes `use_cache=False` (a KV cache is
    useless there and conflicts with recomputation); generation in eval mode is unaffected,
    because checkpointing only acts while the model is training. Non-reentrant checkpointing is
    used so gradients reach LoRA adapters although the frozen embeddings' outputs need no grad.
    """
    bare = getattr(model, "module", model)
    if hasattr(bare, "peft_config"):
        bare = bare.get_base_model()
    if not getattr(bare, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(bare).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(bare, "activation_checkpointing_enable"):  # transformers >= 5.x name
        bare.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        bare.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
