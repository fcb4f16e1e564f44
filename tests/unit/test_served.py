"""What a running app serves and whether a job may reuse it (no Ray): the keys and values come from
the same settings the baseline file records, and every difference is named with both values."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FAKE_PASSAGES, bm25_index

from s3_ray.config import GeneratorConfig, RetrievalConfig, load_config
from s3_ray.retrieval.index import read_manifest
from s3_ray.reward.fingerprint import baseline_settings, retriever_fingerprint
from s3_ray.serving.served import ServedMismatch, check_reusable, generator_served, retriever_served


def test_generator_keys_are_what_the_baseline_records(tmp_path: Path) -> None:
    cfg = load_config(None, [f"retrieval.index_dir={bm25_index(tmp_path)}", "generator.max_new_tokens=12",
                             "generator.backend=openai", "generator.base_url=http://127.0.0.1:9/v1",
                             "generator.temperature=0.3"])
    s, b = generator_served(cfg.generator), baseline_settings(cfg)
    assert s == {"generator.model": b.generator, "generator.backend": b.backend, "generator.decoding": b.decoding}
    # every setting the baseline's decoding fingerprint holds changes what the app serves
    for key, value in [("max_new_tokens", 13), ("max_context_tokens", 512), ("temperature", 0.0)]:
        changed = generator_served(cfg.generator.model_copy(update={key: value}))
        assert changed["generator.decoding"] != s["generator.decoding"], key


def test_retriever_keys_cover_the_index_and_its_search_settings(tmp_path: Path) -> None:
    cfg = load_config(None, [f"retrieval.index_dir={bm25_index(tmp_path)}"])
    m = read_manifest(cfg.retrieval.index_dir)
    s = retriever_served(cfg.retrieval, m.corpus_sha256)
    assert s == {"retrieval.backend": "bm25", "index.k1": 0.9, "index.b": 0.4, "index.corpus_sha256": m.corpus_sha256}
    # the baseline's retriever fingerprint is built from the same manifest parameters and hash
    assert retriever_fingerprint(cfg).startswith(f"bm25 {{\"b\": {s['index.b']}, \"k1\": {s['index.k1']}}}")
    # search-time settings count only where the backend uses them
    assert retriever_served(cfg.retrieval.model_copy(update={"ivf_nprobe": 3}), m.corpus_sha256) == s
    hybrid = retriever_served(RetrievalConfig(backend="hybrid", index_type="ivfpq", rrf_k=30), "ab")
    assert (hybrid["retrieval.ivf_nprobe"], hybrid["retrieval.rrf_k"], hybrid["retrieval.fusion_depth"]) == (16, 30, 50)
    assert hybrid["index.bm25.k1"] == 0.9 and hybrid["index.dense.encoder.name"] == "minilm-l6"
    assert "retrieval.hnsw_ef_search" not in hybrid


def test_check_reusable_names_every_difference_with_both_values() -> None:
    running = generator_served(GeneratorConfig(model="a", max_new_tokens=8))
    check_reusable("generator", running, generator_served(GeneratorConfig(model="a", max_new_tokens=8)))
    with pytest.raises(ServedMismatch) as err:
        check_reusable("generator", running, generator_served(GeneratorConfig(model="b", max_new_tokens=9)))
    msg = str(err.value)
    assert msg.startswith("running generator app serves generator.model='a', this job's config says 'b'; "
                          "generator.decoding='max_new_tokens=8 ")
    assert "this job's config says 'max_new_tokens=9 " in msg and "generator.backend" not in msg
    assert msg.endswith(": stop it (serve shutdown) or use the same config")
    with pytest.raises(ServedMismatch, match=r"retrieval\.rrf_k=<absent>, this job's config says 60"):
        check_reusable("retriever", retriever_served(RetrievalConfig(), "ab"),
                       retriever_served(RetrievalConfig(backend="hybrid"), "ab"))


def test_a_running_retriever_describes_itself_as_the_job_expects(tmp_path: Path) -> None:
    from deployments.retriever import RetrieverAppArgs, RetrieverServer

    index_dir = bm25_index(tmp_path)
    served = RetrieverServer(RetrieverAppArgs(index_dir=index_dir)).describe()
    job = load_config(None, [f"retrieval.index_dir={index_dir}"]).retrieval
    check_reusable("retriever", served, retriever_served(job, read_manifest(index_dir).corpus_sha256))
    other = bm25_index(tmp_path / "other", FAKE_PASSAGES[:4])
    with pytest.raises(ServedMismatch, match="index.corpus_sha256="):
        check_reusable("retriever", served, retriever_served(job, read_manifest(other).corpus_sha256))
