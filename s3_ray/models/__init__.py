"""Model resolution and loading (policy and generator share it)."""

from s3_ray.models.registry import MODELS, ModelError, load_causal_lm, resolve_model, unwrap

__all__ = ["MODELS", "ModelError", "load_causal_lm", "resolve_model", "unwrap"]
