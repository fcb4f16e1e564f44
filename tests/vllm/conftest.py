"""Shared pieces of the real-engine tests: the embedded model and data, and a start deadline.

Nothing here imports vllm: each test module skips itself when vllm is missing (the project's
`.venv`); `scripts/setup_vllm_cpu.sh` builds `.venv-vllm`, where they run.
"""

from __future__ import annotations

import os
from typing import Any

# vLLM's INFO log prints every engine setting and each weight reload; warnings and errors stay.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import pytest

from engine_start import MODEL


@pytest.fixture(scope="session")
def smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of the embedded model on transformers, fp32, frozen."""
    import torch

    from s3_ray.models import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(MODEL, num_threads=2)


@pytest.fixture(scope="session")
def embedded_bm25() -> Any:
    """An in-process BM25 retriever over the embedded corpus."""
    from s3_ray.data.corpus import read_corpus
    from s3_ray.data.embedded import embedded_dir
    from s3_ray.retrieval.bm25 import BM25Retriever

    return BM25Retriever.build(read_corpus(embedded_dir() / "corpus.jsonl"))


@pytest.fixture(scope="session")
def test_questions() -> list[Any]:
    """The embedded test split (pre-shuffled, so its head mixes question types)."""
    from s3_ray.config import DataConfig
    from s3_ray.data.embedded import load_split

    return load_split(DataConfig(), "test")
