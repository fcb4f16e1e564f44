"""Sharded checkpoints of an FSDP policy (`train.parallel: fsdp`), written by every rank.

Layout of one checkpoint directory (`meta.json`'s `format` is `SHARDED_FORMAT`)::

    dcp/                                  torch.distributed.checkpoint: `.metadata` and one
                                          `__<rank>_0.distcp` per rank (float32 weights + AdamW
                                          state of the trained modules, each rank its own shards)
    config.json, model.safetensors, ...   the trained searcher as a bf16 Hugging Face folder
                                          (+ tokenizer, generation config): what evaluation,
                                          `s3-ray serve --searcher` and vLLM load
    trainer_state.pt                      {"step", "rng", "extra", "updater", "optimizer_saved"}
    meta.json                             written last: a folder without it is incomplete

Every rank writes its own shards straight into the folder (`dcp.save`), so no rank gathers the
model and optimiser state; on resume every rank reads only the byte ranges of its own shards
(`dcp.load`), and DCP reshards when the number of workers changed (one plain process included:
`load_sharded_checkpoint` also fills an unsharded model). The bf16 export is gathered one tensor
at a time and written by rank 0. The weights and optimiser state are keyed by parameter name
(`PolicyUpdater.trained_modules`: "policy.*", and "value_head.*" for PPO), not by position.

All functions here are collectives when a process group is initialised: every rank calls them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s3_ray.rl.model.collectives import barrier, rank as this_rank, world_size

SHARDED_FORMAT = 2
DCP_DIR = "dcp"
EXPORT_DTYPE = torch.bfloat16
"""The dtype of the exported Hugging Face folder (serving; the float32 masters are in `dcp/`)."""


def _modules(model: nn.Module, updater: Any) -> nn.Module:
    """What the checkpoint keys its tensors by: the updater's trained modules, else the policy alone
    (under the same "policy." names)."""
    if updater is not None and hasattr(updater, "trained_modules"):
        return updater.trained_modules()
    return nn.ModuleDict({"policy": model})


def save_sharded_checkpoint(directory: str | Path, model: nn.Module, updater: Any, step: int,
                            extra: dict[str, Any] | None = None, tokenizer: Any = None,
                            export_dtype: Any = EXPORT_DTYPE) -> Path:
    """Write the sharded checkpoint of `model` (FSDP-sharded) and `updater` (a PolicyUpdater) to
    `directory` (every rank the same path, on storage they all reach); returns it on every rank.

    An existing folder there is replaced. The optimiser state is written once it exists (a
    checkpoint before the first update, e.g. right after the warm-up, has none: creating it
    would start AdamW's step count early).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from s3_ray.rl.model.checkpoint_files import META_FILE, STATE_FILE, rng_state, save_hf_folder
    from s3_ray.rl.model.sharding import full_state_dict, plain_class

    directory = Path(directory)
    rank = this_rank()
    if rank == 0:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    barrier()
    modules = _modules(model, updater)
    optimizer = getattr(updater, "optimizer", None)
    with_optimizer = optimizer is not None and bool(optimizer.state)
    state: dict[str, Any] = {"model": get_model_state_dict(modules)}
    if with_optimizer:
        state["optim"] = get_optimizer_state_dict(modules, optimizer)
    dcp.save(state, checkpoint_id=str(directory / DCP_DIR))
    del state
    weights = full_state_dict(model, keep=rank == 0, dtype=export_dtype)  # collective, one tensor at a time
    if rank == 0:
        save_hf_folder(directory, model, weights, dtype=export_dtype)
        del weights
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        scalars = updater.scalar_state() if updater is not None and hasattr(updater, "scalar_state") else {}
        torch.save({"step": int(step), "rng": rng_state(), "extra": extra or {}, "updater": scalars,
                    "optimizer_saved": with_optimizer}, directory / STATE_FILE)
    barrier()  # every rank's shards are in place before the folder is declared complete
    if rank == 0:
        meta = {"format": SHARDED_FORMAT, "step": int(step), "created": time.time(),
                "model_class": plain_class(model).__name__, "lora": False, "world_size": world_size(),
                "export_dtype": str(export_dtype).removeprefix("torch.")}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    barrier()
    return directory


def load_sharded_checkpoint(directory: str | Path, model: nn.Module, updater: Any = None,
                            restore_rng: bool = True) -> dict[str, Any]:
    """Restore a sharded checkpoint into `model` (sharded with any number of workers, or plain)
    and `updater` when given; returns {"step", "extra", "rng", "updater"} (the caller adds "meta").

    Each rank reads only what its own shards need from `dcp/`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    from s3_ray.models import unwrap
    from s3_ray.rl.model.checkpoint_files import STATE_FILE, set_rng_state

    directory = Path(directory)
    saved = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    modules = _modules(unwrap(model), updater)
    optimizer = getattr(updater, "optimizer", None)
    with_optimizer = optimizer is not None and bool(saved.get("optimizer_saved"))
    state: dict[str, Any] = {"model": get_model_state_dict(modules)}
    if with_optimizer:
        state["optim"] = get_optimizer_state_dict(modules, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))
    except Exception as err:  # DCP names the missing keys; say which checkpoint
        raise ValueError(f"{directory}: the sharded checkpoint does not fit this model/optimizer: {err}") from err
    set_model_state_dict(modules, state["model"])
    if with_optimizer:
        set_optimizer_state_dict(modules, optimizer, state["optim"])
    elif optimizer is not None and optimizer.state:
        optimizer.state.clear()  # saved before the first update: resume with a fresh optimiser, as it was
    if updater is not None and hasattr(updater, "load_scalar_state"):
        updater.load_scalar_state(saved.get("updater", {}))
    if restore_rng:
        set_rng_state(saved["rng"])
    return saved
