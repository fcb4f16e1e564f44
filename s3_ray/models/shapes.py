"""Model shapes without the weights: what the memory plan needs to know about a model by name.

`model_shape(name)` returns a transformers config as a plain dict (`model_type` + fields, what
`AutoConfig.for_model(**shape)` takes). It reads, in order: a local folder's `config.json`, the
converted or built copy of a registered model, the shapes of the models the shipped configs name
(`KNOWN_SHAPES`, copied from their hub `config.json`), and last the Hugging Face cache (offline).
`decoder_params` and `kv_bytes_per_token` are the closed-form counts the vLLM and faiss formulas use.
Nothing here loads a weight or touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_QWEN = {"model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
         "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}
_SMOLLM2_135M = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                 "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                 "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                 "rms_norm_eps": 1e-5, "hidden_act": "silu", "torch_dtype": "bfloat16"}


def _qwen(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tie: bool) -> dict[str, Any]:
    return {**_QWEN, "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "tie_word_embeddings": tie}


# The hub config.json of the models the shipped configs and docs name (Qwen2.5: its model cards).
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B-Instruct": _qwen(151936, 896, 4864, 24, 14, 2, True),
    "Qwen/Qwen2.5-1.5B-Instruct": _qwen(151936, 1536, 8960, 28, 12, 2, True),
    "Qwen/Qwen2.5-3B-Instruct": _qwen(151936, 2048, 11008, 36, 16, 2, True),
    "Qwen/Qwen2.5-7B-Instruct": _qwen(152064, 3584, 18944, 28, 28, 4, False),
    "Qwen/Qwen2.5-14B-Instruct": _qwen(152064, 5120, 13824, 48, 40, 8, False),
    "Qwen/Qwen2.5-32B-Instruct": _qwen(152064, 5120, 27648, 64, 40, 8, False),
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "smollm2-135m-instruct": _SMOLLM2_135M,
}
for _name in list(KNOWN_SHAPES):  # the base models share their instruct model's shape
    if _name.endswith("-Instruct"):
        KNOWN_SHAPES.setdefault(_name.removesuffix("-Instruct"), KNOWN_SHAPES[_name])

# Dense encoders: (embedding dim, parameters).
KNOWN_ENCODERS: dict[str, tuple[int, int]] = {
    "intfloat/e5-base-v2": (768, 109_482_240),
    "intfloat/e5-large-v2": (1024, 335_141_888),
    "BAAI/bge-base-en-v1.5": (768, 109_482_240),
    "sentence-transformers/all-MiniLM-L6-v2": (384, 22_713_216),
    "minilm-l6": (384, 22_713_216),
}


class ShapeError(ValueError):
    """The plan cannot tell a model's shape offline."""


def model_shape(name: str) -> dict[str, Any]:
    """The transformers config of `name` as a dict with `model_type` (see the module docstring)."""
    path = Path(name).expanduser()
    candidates = [path / "config.json"]
    try:
        from s3_ray.models.registry import BUILDERS, MODELS, cache_root

        if name in MODELS or name in BUILDERS:
            candidates.append(cache_root() / name / "config.json")
    except ImportError:  # a bare checkout without the registry's extras
        pass
    for config_file in candidates:
        if config_file.is_file():
            return json.loads(config_file.read_text())
    if name in KNOWN_SHAPES:
        return dict(KNOWN_SHAPES[name])
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, local_files_only=True).to_dict()
    except (OSError, ValueError) as err:
        known = ", ".join(sorted(KNOWN_SHAPES))
        raise ShapeError(f"model {name!r}: no local config.json, not in the Hugging Face cache and not a known "
                         f"shape ({known}); download it once or give a local folder ({err.__class__.__name__})") \
            from None


def head_dim(shape: dict[str, Any]) -> int:
    return int(shape.get("head_dim") or shape["hidden_size"] // shape["num_attention_heads"])


def decoder_params(shape: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen2-style decoder (embeddings, layers, final norm, head unless tied).

    >>> decoder_params(KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"])
    7615616512
    """
    h, v, inter, layers = shape["hidden_size"], shape["vocab_size"], shape["intermediate_size"], \
        shape["num_hidden_layers"]
    kv = shape.get("num_key_value_heads") or shape["num_attention_heads"]
    kv_dim = kv * head_dim(shape)
    q_dim = shape["num_attention_heads"] * head_dim(shape)
    attn = h * q_dim + 2 * h * kv_dim + q_dim * h
    if shape.get("model_type") == "qwen2" or shape.get("attention_bias"):
        attn += q_dim + 2 * kv_dim
    per_layer = attn + 3 * h * inter + 2 * h
    head = 0 if shape.get("tie_word_embeddings", False) else v * h
    return v * h + layers * per_layer + h + head


def kv_bytes_per_token(shape: dict[str, Any], dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token takes: 2 (K and V) x layers x KV heads x head dim x dtype bytes.

    >>> kv_bytes_per_token(KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"])
    57344
    """
    kv = shape.get("num_key_value_heads") or shape["num_attention_heads"]
    return 2 * shape["num_hidden_layers"] * kv * head_dim(shape) * dtype_bytes
