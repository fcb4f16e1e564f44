"""The files every checkpoint layout shares (`s3_ray.rl.model.checkpoint` for one process or DDP,
`s3_ray.rl.model.sharded_checkpoint` for FSDP): the names of `meta.json` and `trainer_state.pt`,
the RNG states kept in the latter, and the loadable Hugging Face folder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from s3_ray.rl.model.sharding import plain_class

STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors / plain containers (weights_only-loadable)."""
    import numpy as np

    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    import numpy as np

    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_hf_folder(folder: str | Path, model: Any, weights: dict[str, torch.Tensor] | None = None,
                   dtype: Any = None) -> None:
    """`model.save_pretrained(folder)`, with `weights` as its state dict when given (a sharded
    model's gathered weights). The config names the model's own class, not FSDP's wrapper class,
    and `dtype` (the weights' dtype, when they are not the model's own) so that a loader asking
    for the folder's own dtype (vLLM's "auto") gets it."""
    import copy

    model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
    cls = plain_class(model)
    if cls is not type(model) or dtype is not None:
        config = copy.deepcopy(model.config)
        config.architectures = [cls.__name__]
        if dtype is not None:
            config.dtype = dtype
        config.save_pretrained(folder)
