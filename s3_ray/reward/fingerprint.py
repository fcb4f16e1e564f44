"""Which baseline file a run's config expects: the settings it must have been made with (the
retriever and decoding fingerprints among them) and where it lives."""

from __future__ import annotations

import json
from pathlib import Path

from s3_ray.config import GeneratorConfig, S3Config
from s3_ray.reward.baseline_file import BaselineCache, BaselineSettings


def retriever_fingerprint(cfg: S3Config) -> str:
    """Backend, build parameters and corpus hash of the index in `cfg.retrieval.index_dir`.

    Read from the index manifest (the index must exist), so a rebuilt index or another
    corpus invalidates the baseline without rehashing a large corpus here.
    """
    from s3_ray.retrieval.index import read_manifest

    m = read_manifest(cfg.retrieval.index_dir)
    return f"{m.backend} {json.dumps(m.params, sort_keys=True)} corpus-sha256:{m.corpus_sha256[:16]}"


def decoding_fingerprint(gen: GeneratorConfig) -> str:
    """The generator settings besides model and backend that change its answers, as one string.

    `fit` is how contexts are counted when cut to `max_context_tokens`: "tokenizer" (exact), or
    "chars/3" for an openai backend without a local tokenizer for the served model.

    >>> decoding_fingerprint(GeneratorConfig(max_new_tokens=16))
    'max_new_tokens=16 max_context_tokens=768 temperature=0.0 fit=tokenizer'
    """
    from s3_ray.generation.fit import context_fit_mode

    return (f"max_new_tokens={gen.max_new_tokens} max_context_tokens={gen.max_context_tokens} "
            f"temperature={gen.temperature} fit={context_fit_mode(gen.backend, gen.model)}")


def baseline_settings(cfg: S3Config) -> BaselineSettings:
    """The settings a run with `cfg` expects its baseline file to have been made with."""
    return BaselineSettings(generator=cfg.generator.model, init_k=cfg.rollout.init_k,
                            retriever=retriever_fingerprint(cfg), method=cfg.reward.baseline,
                            judge=cfg.reward.use_judge, backend=cfg.generator.backend,
                            decoding=decoding_fingerprint(cfg.generator))


def baseline_path(cfg: S3Config, split: str) -> Path:
    """Where the baseline of one split lives: `<run_dir>/baseline/<split>.jsonl`."""
    return cfg.path("baseline", f"{split}.jsonl")


def open_baseline(cfg: S3Config, split: str) -> BaselineCache:
    """The split's baseline file, checked against the settings of `cfg` (it may not exist yet)."""
    return BaselineCache(baseline_path(cfg, split), baseline_settings(cfg))
