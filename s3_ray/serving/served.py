"""What a running app serves, keyed like the job config, and whether a job may reuse that app.

A reward must never subtract a baseline made with other settings. The baseline file records the
generator's model, backend and decoding fingerprint and the index it was retrieved from
(`s3_ray/reward/baseline.py`), and the reward checks them; a job that reuses a retriever or
generator app already running must therefore first check that the app serves what its own
config says. Both sides come from the same functions: the app from its args (its `describe()`
handle method), the job from its config, and `check_reusable` compares them key by key.

* generator: `generator.model`, `generator.backend`, `generator.decoding` (the baseline's
  `decoding_fingerprint`: token budgets, temperature, how contexts are cut);
* retriever: `retrieval.backend`, the index's build parameters as its manifest records them
  (`index.k1`, `index.dense.encoder.name`, ...), the corpus hash, and the search-time settings
  that change results for that backend (HNSW efSearch, IVF nprobe, RRF constant and depth).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from s3_ray.config import GeneratorConfig, RetrievalConfig


class ServedMismatch(RuntimeError):
    """A running app serves other settings than the job's config asks for."""


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


def generator_served(cfg: GeneratorConfig) -> dict[str, Any]:
    """What a generator app built from `cfg` answers with, as its baseline records it.

    >>> generator_served(GeneratorConfig(model="m", max_new_tokens=8))["generator.decoding"]
    'max_new_tokens=8 max_context_tokens=768 temperature=0.0 fit=tokenizer'
    """
    from s3_ray.reward.fingerprint import decoding_fingerprint

    return {"generator.model": cfg.model, "generator.backend": cfg.backend,
            "generator.decoding": decoding_fingerprint(cfg)}


def _flatten(prefix: str, tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= _flatten(f"{prefix}{key}.", value)
        else:
            out[f"{prefix}{key}"] = value
    return out


def search_settings(cfg: RetrievalConfig) -> tuple[str, ...]:
    """The search-time `retrieval.*` keys that change what `cfg`'s backend returns.

    >>> search_settings(RetrievalConfig(backend="hybrid", index_type="hnsw"))
    ('hnsw_ef_search', 'rrf_k', 'fusion_depth')
    >>> search_settings(RetrievalConfig(backend="bm25"))
    ()
    """
    keys: list[str] = []
    if cfg.backend in ("dense", "hybrid"):
        keys += {"flat": [], "hnsw": ["hnsw_ef_search"], "ivfpq": ["ivf_nprobe"]}[cfg.index_type]
        if cfg.index_type == "ivfpq" and cfg.pq_refine != "none":
            keys.append("refine_k_factor")
    if cfg.backend == "hybrid":
        keys += ["rrf_k", "fusion_depth"]
    return tuple(keys)


def retriever_served(cfg: RetrievalConfig, corpus_sha256: str) -> dict[str, Any]:
    """What a retriever app built from `cfg` over an index of that corpus returns results from.

    >>> sorted(retriever_served(RetrievalConfig(k1=1.2), "ab" * 32).items())[:3]
    [('index.b', 0.4), ('index.corpus_sha256', 'abababababababababababababababababababababababababababababababab'), ('index.k1', 1.2)]
    """
    from s3_ray.retrieval.index import index_params

    return {"retrieval.backend": cfg.backend, **_flatten("index.", index_params(cfg)),
            "index.corpus_sha256": corpus_sha256, **{f"retrieval.{k}": getattr(cfg, k) for k in search_settings(cfg)}}


def check_reusable(app: str, served: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise ServedMismatch naming every key whose value the running `app` serves differs from the
    job's, with both values.

    >>> check_reusable("generator", {"generator.model": "a"}, {"generator.model": "a"})
    >>> check_reusable("generator", {"generator.model": "a"}, {"generator.model": "b"})
    Traceback (most recent call last):
    ...
    s3_ray.serving.served.ServedMismatch: running generator app serves generator.model='a', this job's config says 'b': stop it (serve shutdown) or use the same config
    """
    keys = dict.fromkeys([*expected, *served])
    diffs = [f"{k}={served.get(k, ABSENT)!r}, this job's config says {expected.get(k, ABSENT)!r}"
             for k in keys if served.get(k, ABSENT) != expected.get(k, ABSENT)]
    if diffs:
        raise ServedMismatch(f"running {app} app serves {'; '.join(diffs)}: stop it (serve shutdown) or use the "
                             "same config")
