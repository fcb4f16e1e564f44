"""Training checkpoints: an HF model folder plus `trainer_state.pt` and `meta.json`.

Layout of one checkpoint directory of one process or DDP (`meta.json`'s `format` 1)::

    config.json, model.safetensors        the policy as a plain HF model (LoRA merged in)
    tokenizer files                       when a tokenizer is given
    adapter/                              LoRA runs only: adapter_model.safetensors, adapter_config.json
    trainer_state.pt                      {"optimizer", "step", "rng", "extra"}
    meta.json                             {"format", "step", "created", "model_class", "lora"}

The folder itself is always loadable with `load_causal_lm(path)` (evaluation, serving). A LoRA
run resumes from `adapter/` on top of its base weights, which stay exact: merging is only done
for the exported copy, never to the model being trained.

An FSDP-sharded policy (`train.parallel: fsdp`) writes the sharded layout instead (`format` 2,
`s3_ray.rl.model.sharded_checkpoint`): every rank writes its own shards of the float32 weights and
optimiser state with `torch.distributed.checkpoint`, beside the same loadable HF folder (in bf16)
and the same `trainer_state.pt` / `meta.json`; `load_checkpoint` reads either layout into a sharded
or a plain model. A plain checkpoint can also be loaded into a sharded model (each rank cuts its
shards from the whole tensors).

A plain checkpoint is written to a temporary sibling folder and renamed into place, and a sharded
one gets its `meta.json` last, so a crash never leaves a half-written checkpoint that
`latest_checkpoint` could pick. `trainer_state.pt` holds
only tensors and plain Python containers, and is read with `torch.load(weights_only=True)`:
loading a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from s3_ray.models import unwrap
from s3_ray.rl.model.checkpoint_files import (META_FILE, STATE_FILE, rng_state, save_hf_folder,  # noqa: F401
                                              set_rng_state)
from s3_ray.rl.model.sharding import is_sharded, load_full_state_dict, plain_class, tied_names

FORMAT_VERSION = 1
ADAPTER_DIR = "adapter"


def _state_of(optimizer: Any) -> dict[str, Any]:
    """Accepts an optimiser (or anything with `state_dict()`, e.g. a PolicyUpdater) or a state dict."""
    if isinstance(optimizer, dict):
        return optimizer
    if hasattr(optimizer, "state_dict"):
        return optimizer.state_dict()
    raise TypeError(f"optimizer_state must be a dict or have state_dict(), got {type(optimizer).__name__}")


def save_checkpoint(
    directory: str | Path,
    model: Any,
    optimizer_state: Any,
    step: int,
    extra: dict[str, Any] | None = None,
    tokenizer: Any = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint to `directory` atomically (an existing one there is replaced).

    `optimizer_state` is a state dict or an object with `state_dict()` (a torch optimiser or a
    `PolicyUpdater`, which also carries the PPO value head). `extra` (e.g. the data cursor) must
    hold only tensors, numbers, strings, None and lists/tuples/dicts of them. `weights` is the
    model's plain state dict when the model itself holds shards (`sharding.full_state_dict`, and
    `optimizer_state` then the gathered state). Only one process (rank 0) should call this.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        bare = unwrap(model)
        lora = _save_model(tmp, bare, weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(
            {"optimizer": _state_of(optimizer_state), "step": int(step), "rng": rng_state(), "extra": extra or {}},
            tmp / STATE_FILE,
        )
        meta = {"format": FORMAT_VERSION, "step": int(step), "created": time.time(),
                "model_class": plain_class(bare.get_base_model() if lora else bare).__name__, "lora": lora}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{time.time_ns()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _save_model(folder: Path, bare: Any, weights: dict[str, torch.Tensor] | None = None) -> bool:
    """Write the HF folder (merged when LoRA) and, for LoRA, the adapter; returns whether it was LoRA."""
    from s3_ray.rl.model.lora import is_lora, merged_state_dict, write_adapter

    if not is_lora(bare):
        save_hf_folder(folder, bare, weights)
        return False
    bare.get_base_model().save_pretrained(folder, state_dict=merged_state_dict(bare), safe_serialization=True)
    write_adapter(bare, folder / ADAPTER_DIR)
    return True


def _read_safetensors(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob(f"{prefix}*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no {prefix}*.safetensors weights found")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def _load_weights(directory: Path, model: Any) -> None:
    """Load saved weights into `model` in place; tied copies the HF writer omits are allowed missing.

    A LoRA model gets only its adapter back: its base weights are the run's base, not the merged
    export (which already contains the adapter).
    """
    from s3_ray.rl.model.lora import ADAPTER_WEIGHTS, is_lora, load_adapter_state_dict

    bare = unwrap(model)
    if is_lora(bare):
        adapter = directory / ADAPTER_DIR
        if not (adapter / ADAPTER_WEIGHTS).is_file():
            raise FileNotFoundError(f"{directory}: no {ADAPTER_DIR}/{ADAPTER_WEIGHTS}; the model has a LoRA "
                                    "adapter but this checkpoint was saved without one (train.lora_rank 0?)")
        load_adapter_state_dict(bare, _read_safetensors(adapter, "adapter_model"), where=str(adapter))
        return
    weights = _read_safetensors(directory, "model")
    if is_sharded(bare):
        missing = load_full_state_dict(bare, weights, where=str(directory))
        tied = tied_names(bare)
        untied = [k for k in missing if tied.get(k, k) not in weights]
        if untied:
            raise ValueError(f"{directory}: model weights missing from the checkpoint: {untied[:5]}")
        return
    result = bare.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{directory}: weights not in the model: {result.unexpected_keys[:5]}")
    loaded = {id(t) for name, t in bare.state_dict(keep_vars=True).items() if name in weights}
    current = bare.state_dict(keep_vars=True)
    untied = [k for k in result.missing_keys if id(current[k]) not in loaded]
    if untied:
        raise ValueError(f"{directory}: model weights missing from the checkpoint: {untied[:5]}")


def load_checkpoint(
    directory: str | Path, model: Any, optimizer: Any | None = None, restore_rng: bool = True
) -> dict[str, Any]:
    """Restore weights into `model` (and state into `optimizer` if given); return the trainer state.

    `optimizer` is anything with `load_state_dict` (a torch optimiser or a PolicyUpdater), matching
    what was passed to `save_checkpoint`. Returns {"step", "extra", "optimizer", "rng", "meta"}.
    """
    directory = Path(directory)
    meta_path, state_path = directory / META_FILE, directory / STATE_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint: {META_FILE} or {STATE_FILE} is missing")
    meta = json.loads(meta_path.read_text())
    from s3_ray.rl.model.sharded_checkpoint import SHARDED_FORMAT, load_sharded_checkpoint

    if meta.get("format") == SHARDED_FORMAT:
        state = load_sharded_checkpoint(directory, model, optimizer, restore_rng=restore_rng)
        state["meta"] = meta
        return state
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: checkpoint format {meta.get('format')!r}, expected {FORMAT_VERSION} "
                         f"or {SHARDED_FORMAT}")
    from s3_ray.rl.model.lora import is_lora

    if meta.get("lora") and optimizer is not None and not is_lora(model):
        raise ValueError(f"{directory} trained a LoRA adapter: resume it with the same train.lora_rank "
                         "(a model without an adapter can only load its merged weights, optimizer=None)")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    _load_weights(directory, model)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        set_rng_state(state["rng"])
    state["meta"] = meta
    return state


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint directory directly under `root` with the highest step (None if there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for meta_path in root.glob(f"*/{META_FILE}"):
        if meta_path.parent.name.startswith("."):
            continue  # temporary or replaced folders
        step = int(json.loads(meta_path.read_text())["step"])
        if best is None or step > best[0]:
            best = (step, meta_path.parent)
    return None if best is None else best[1]
