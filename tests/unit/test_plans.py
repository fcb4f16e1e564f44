"""Every job's `--dry-run` (evaluate's included) has the one shape and the one exit rule of `s3_ray.plans`."""

from __future__ import annotations

import importlib
import json

import pytest

from tests.unit.test_dry_runs import JOBS, nothing_heavy  # noqa: F401 -- autouse fixture: no Ray, no model

WITH_GENERATOR = ["train", "sweep", "precompute", "serve", "demo", "evaluate"]


def _dry(job: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    rc = importlib.import_module(f"jobs.{job}").main([*args, "--dry-run"])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out), captured.err


@pytest.mark.parametrize("job", [*JOBS, "evaluate"])
def test_one_shape_and_missing_inputs_are_not_fatal(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _dry(job, [], capsys)
    assert set(out) == {"job", "plan", "missing", "problems"} and out["job"] == job
    assert out["plan"]["config"]["run_dir"].endswith("runs/demo")
    assert rc == 0 and out["problems"] == [] and err == ""
    if job not in ("build_index", "demo"):  # these two make the index themselves
        assert any("manifest.json does not exist" in m for m in out["missing"]), out["missing"]


@pytest.mark.parametrize("job", WITH_GENERATOR)
def test_a_contradiction_exits_2_in_every_job(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _dry(job, ["generator.backend=openai"], capsys)
    assert rc == 2 and "generator.base_url must be set for the openai backend" in out["problems"]
    assert f"dry run of {job}: {len(out['problems'])} problem(s)" in err
