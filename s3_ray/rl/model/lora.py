"""LoRA adapters for the searcher (peft), and the KL reference they make free.

With LoRA the trainable policy is `base + adapter`, so "the policy with its adapters switched off"
*is* the frozen base. That base serves as the KL reference (`AdapterOffReference`) instead of a
second full copy of the model. For this to equal the policy RL starts from, a format warm-up is
trained as its own adapter, merged into the base (`merge_lora`) and followed by a fresh adapter
for RL: then "adapters off" == the warmed-up policy == the reference.

Checkpoints keep the adapter (for an exact resume) and a merged copy of the weights (a plain HF
folder that evaluation and serving load without peft); `iter_merged_weights` builds the latter
(and the weights a vLLM engine gets in `searcher.lora_push: merged`) one tensor at a time without
touching the training model. `write_adapter` writes the adapter alone in peft's layout, which a
vLLM engine serving LoRA loads (`searcher.lora_push: adapter`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from s3_ray.config import TrainConfig
from s3_ray.models import unwrap

ADAPTER_NAME = "default"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""The adapter's weights file in peft's folder layout (beside `adapter_config.json`)."""


def is_lora(model: Any) -> bool:
    """Whether `model` (or the module inside a DDP wrapper) is a peft model."""
    return hasattr(unwrap(model), "peft_config")


def apply_lora(model: nn.Module, cfg: TrainConfig, base_dtype: Any = None) -> Any:
    """Wrap `model` in a fresh LoRA adapter (rank `cfg.lora_rank`); only the adapter trains.

    Targets are `cfg.lora_targets` (module names or name suffixes) or, when None, every linear
    layer except the output head (peft's "all-linear"). New adapters start with B = 0, so the
    wrapped model computes exactly what `model` did. `base_dtype` (bf16 on a GPU:
    `s3_ray.rl.model.precision`) casts the frozen base weights, which never take an update, while
    the adapter keeps its float32 master weights; buffers keep their dtype (rotary frequencies).
    """
    from peft import LoraConfig, get_peft_model

    if cfg.lora_rank < 1:
        raise ValueError(f"train.lora_rank must be >= 1 to apply LoRA, got {cfg.lora_rank}")
    if is_lora(model):
        raise ValueError("the model already carries a LoRA adapter; merge it (merge_lora) before adding another")
    if cfg.lora_targets is not None and not cfg.lora_targets:
        raise ValueError("train.lora_targets is an empty list; use null for every linear layer")
    targets: Any = list(cfg.lora_targets) if cfg.lora_targets is not None else "all-linear"
    lora_cfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, bias="none")
    try:
        with warnings.catch_warnings():  # peft reads a transformers property that is being renamed
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, lora_cfg)
    except ValueError as err:
        raise ValueError(f"train.lora_targets={cfg.lora_targets!r} does not fit the model: {err}") from err
    if base_dtype is not None:
        cast_frozen_(peft_model, base_dtype)
    return peft_model


@torch.no_grad()
def cast_frozen_(model: nn.Module, dtype: Any) -> None:
    """Cast, in place, every floating-point parameter that does not train to `dtype` (tied
    parameters are one object, so they stay tied); trainable parameters are left as they are."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def merge_lora(model: Any) -> nn.Module:
    """Fold the adapter into the base weights and return the plain model (peft's merge_and_unload)."""
    bare = unwrap(model)
    if not is_lora(bare):
        raise ValueError(f"{type(bare).__name__} carries no LoRA adapter to merge")
    return bare.merge_and_unload()


def _lora_layers(base: nn.Module) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def merged_state_dict(model: Any) -> dict[str, Tensor]:
    """The state dict a plain model with the adapter merged in would have (nothing is modified):
    `iter_merged_weights` collected, for a checkpoint's plain HF folder."""
    return dict(iter_merged_weights(model))


def iter_merged_weights(model: Any) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of the plain model with the adapter merged in, one tensor at a time, in the
    state dict's (layer by layer) order; nothing is modified.

    Names lose peft's `.base_layer` and the `lora_*` entries go; each adapted weight becomes
    W + scale * B A (computed in float32, returned in W's dtype), built only when it is reached,
    so a consumer that drops each tensor never holds more than one merged weight.
    """
    return _plain_weights(model, merge=True)


def iter_base_weights(model: Any) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of the frozen base under the adapter, with plain names (the weights a
    rollout engine that applies the adapter itself needs); one tensor at a time, nothing copied."""
    return _plain_weights(model, merge=False)


def _plain_weights(model: Any, merge: bool) -> Iterator[tuple[str, Tensor]]:
    bare = unwrap(model)
    if not is_lora(bare):
        raise ValueError(f"{type(bare).__name__} carries no LoRA adapter")
    base = bare.get_base_model()
    adapted: dict[str, Any] = {}
    for name, layer in _lora_layers(base):
        if getattr(layer, "merged", False):
            continue  # the delta is in the base weight already
        if getattr(layer, "use_dora", {}).get(ADAPTER_NAME, False):
            # train.lora_* never builds DoRA; a model that arrives with one cannot be merged here
            raise ValueError(f"{name}: DoRA adapters cannot be merged; train with plain LoRA (train.lora_rank)")
        adapted[f"{name}.weight"] = layer
    return _walk(base, adapted if merge else {})


@torch.no_grad()
def _walk(base: nn.Module, adapted: dict[str, Any]) -> Iterator[tuple[str, Tensor]]:
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        layer = adapted.get(name)
        if layer is not None:
            delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a in layer.lora_A)
            tensor = (tensor.float() + delta).to(tensor.dtype)
        yield name, tensor


def adapter_state_dict(model: Any) -> dict[str, Tensor]:
    """Only the adapter's tensors (what a resume needs beyond the base), cloned to CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unwrap(model)).items()}


def write_adapter(model: Any, folder: str | Path) -> int:
    """Write the adapter alone into a new `folder` in peft's layout (`adapter_model.safetensors`,
    `adapter_config.json`), which peft and vLLM's LoRA loader read; returns the weights' bytes."""
    from safetensors.torch import save_file

    bare = unwrap(model)
    out = Path(folder)
    out.mkdir(parents=True)
    save_file(adapter_state_dict(bare), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    bare.peft_config[ADAPTER_NAME].save_pretrained(str(out))
    return (out / ADAPTER_WEIGHTS).stat().st_size


def adapter_rank(model: Any) -> int:
    """The rank of the model's LoRA adapter (0 for a model without one)."""
    bare = unwrap(model)
    return int(bare.peft_config[ADAPTER_NAME].r) if is_lora(bare) else 0


def load_adapter_state_dict(model: Any, state: dict[str, Tensor], where: str = "adapter") -> None:
    """Load adapter tensors saved by `adapter_state_dict`; every adapter weight must be present."""
    from peft import set_peft_model_state_dict

    bare = unwrap(model)
    expected = set(adapter_state_dict(bare))
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"{where}: adapter weights do not match the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); was it saved with other lora_rank/lora_targets?")
    set_peft_model_state_dict(bare, state)


class AdapterOffReference:
    """The KL reference of a LoRA policy: the same model, run without gradients, adapters off.

    Quacks like the reference model `token_logprobs` expects (`parameters()` and a forward call);
    `s3_ray.rl.algo.batch.grid_logprobs` runs the policy's forward and its LM head inside
    `adapters_off()`. The forward runs in eval mode (no dropout) and restores the policy's mode
    afterwards.
    """

    def __init__(self, policy: Any) -> None:
        if not is_lora(policy):
            raise ValueError("AdapterOffReference needs a LoRA (peft) policy")
        self.policy = unwrap(policy)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.policy.parameters()

    @contextlib.contextmanager
    def adapters_off(self) -> Iterator[None]:
        """Eval mode, no gradients, every adapter switched off; the policy's mode is restored after."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.policy.disable_adapter():
                yield
        finally:
            self.policy.train(was_training)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.adapters_off():
            return self.policy(*args, **kwargs)
