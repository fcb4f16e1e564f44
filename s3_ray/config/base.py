"""The configuration's building blocks: the strict base model every section derives from, and the
error a bad file or override raises."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# Where faiss keeps Flat/IVF shards (retrieval.faiss_gpu): "auto" = GPUs when the installed faiss
# can use one, True = GPUs required, False = host memory. Resolved by s3_ray.retrieval.faiss_build.
FaissGpu = Literal["auto"] | bool


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo fails with its full path) and a loaded config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
