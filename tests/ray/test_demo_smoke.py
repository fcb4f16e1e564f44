"""The README's main command, end to end, with tiny models: every stage must connect."""

import json

import pytest
from fakes import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]



def test_demo_pipeline_with_tiny_models(serve_instance, tmp_path, monkeypatch):
    from s3_ray.pipeline.demo import run_demo
    from s3_ray.config import load_config

    monkeypatch.chdir(tmp_path)  # relative paths must resolve against the job's directory
    overrides = {
        "searcher.model": "tiny-random", "searcher.max_new_tokens": 6, "searcher.num_threads": 1,
        "generator.model": "tiny-random", "generator.max_new_tokens": 4, "generator.num_threads": 1,
        "data.train_limit": 6, "data.test_limit": 4,
        "train.steps": 1, "train.questions_per_step": 2, "train.group_size": 2, "train.checkpoint_every": 1,
        "train.warmup_steps": 1, "train.warmup_batch": 1,
        "rollout.max_turns": 1, "serve.port": free_port(), "wandb.enabled": False,
    }
    from jobs.runtime import DEFAULT_CONFIG, log, start_services

    cfg = load_config(DEFAULT_CONFIG, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]).absolute()
    out = run_demo(cfg, start_services, log=log)

    assert set(out["summaries"]) == {"naive_rag", "s3_untrained", "s3_warmup_only", "s3_trained"}
    assert all(s["n"] == 4 for s in out["summaries"].values())
    report = tmp_path / "runs" / "demo" / "report"
    for name in ("results.md", "results.json", "accuracy.png", "training.png"):
        assert (report / name).is_file(), name
    assert (tmp_path / "runs" / "demo" / "baseline" / "train.jsonl").is_file()
    metrics = [json.loads(x) for x in (tmp_path / "runs/demo/train/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m.get("phase") != "warmup"] == [1]
