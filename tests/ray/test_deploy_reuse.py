"""`jobs.runtime.deploy_services` reuses a running retriever or generator app only when it serves
what the job's config says: a reward must never subtract a baseline made with other settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FAKE_PASSAGES, bm25_index, free_port

from s3_ray.config import load_config


@pytest.mark.ray
def test_a_running_app_is_reused_only_with_the_same_settings(serve_instance, tmp_path: Path) -> None:
    from jobs import runtime
    from s3_ray.serving.served import ServedMismatch

    serve = serve_instance
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"retrieval.index_dir={bm25_index(tmp_path)}",
                             "generator.model=tiny-random",
                             "generator.max_new_tokens=4", f"generator.cache_path={tmp_path / 'gen.sqlite'}",
                             f"serve.port={free_port()}", "serve.retriever_cpus=0.25", "serve.generator_cpus=0.25"])
    runtime.deploy_services(cfg)
    deployed = {name: app.last_deployed_time_s for name, app in serve.status().applications.items()}
    assert set(deployed) == {"retriever", "generator"}

    runtime.deploy_services(cfg)  # the same config: both apps are reused as they run
    assert {n: a.last_deployed_time_s for n, a in serve.status().applications.items()} == deployed

    with pytest.raises(ServedMismatch, match=r"running generator app serves generator\.decoding='max_new_tokens=4 "
                                             r".*', this job's config says 'max_new_tokens=8 .*': stop it"):
        runtime.deploy_services(cfg.with_overrides({"generator.max_new_tokens": 8}))
    with pytest.raises(ServedMismatch, match="generator.model='tiny-random', this job's config says 'other-model'"):
        runtime.deploy_services(cfg.with_overrides({"generator.model": "other-model"}))
    with pytest.raises(ServedMismatch, match=r"running retriever app serves index\.k1=0\.9, this job's config "
                                             r"says 1\.2: stop it \(serve shutdown\) or use the same config"):
        runtime.deploy_services(cfg.with_overrides({"retrieval.k1": 1.2}), with_generator=False)
    other = bm25_index(tmp_path / "other", FAKE_PASSAGES[:5])  # another corpus, same settings
    with pytest.raises(ServedMismatch, match="running retriever app serves index.corpus_sha256="):
        runtime.deploy_services(cfg.with_overrides({"retrieval.index_dir": other}), with_generator=False)
    # refused, not redeployed: the apps still serve the first config
    assert {n: a.last_deployed_time_s for n, a in serve.status().applications.items()} == deployed
