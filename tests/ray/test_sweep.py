"""Ray Tune: a 2-trial budget sweep over the searcher's inference run, with its report."""

import json

import pytest

from s3_ray.config import load_config

pytestmark = [pytest.mark.ray]


def test_two_trial_sweep_reports_accuracy_and_context_size(ray_session, tmp_path):
    from jobs.sweep import run_sweep, write_sweep_report
    from s3_ray.clients import GeneratorClient, RetrieverClient
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.generation import build_generator
    from s3_ray.retrieval.index import build_index, load_retriever

    overrides = {
        "run_dir": str(tmp_path / "run"),
        "retrieval.index_dir": str(tmp_path / "index"),
        "searcher.model": "tiny-random",
        "searcher.max_new_tokens": 8,
        "searcher.num_threads": 1,
        "generator.model": "tiny-random",
        "generator.max_new_tokens": 4,
        "generator.cache_path": None,
        "rollout.max_turns": 1,
        "eval.split": "dev",
        "data.test_limit": 4,
        "sweep.param_space": {"rollout.init_k": [1, 3]},
    }
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    build_index(resolve_paths(cfg.data).corpus, cfg.retrieval, progress=False)
    retriever = RetrieverClient.in_process(load_retriever(cfg.retrieval))
    generator = GeneratorClient.in_process(build_generator(cfg.generator))

    rows = run_sweep(cfg, retriever, generator, name="sweep-test")
    assert len(rows) == 2 and all("error" not in r for r in rows), rows
    by_k = {r["config"]["rollout.init_k"]: r for r in rows}
    # more initial documents -> a larger context: the trials really ran with their own budgets
    assert by_k[3]["context_docs"] > by_k[1]["context_docs"] >= 1
    md = write_sweep_report(rows, tmp_path / "report")
    assert md.read_text().count("\n|") >= 3
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000
