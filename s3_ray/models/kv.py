"""The name transformers gives the KV cache: `cache` since 5.23 (`past_key_values` is deprecated
there, with a warning on every use), `past_key_values` before (the vLLM extra pins an older
transformers). Model forwards take it and their outputs return it under that name."""

from __future__ import annotations

import functools


@functools.cache
def cache_field() -> str:
    """`"cache"` or `"past_key_values"`, whichever the installed transformers uses."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"
