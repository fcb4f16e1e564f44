"""`jobs.evaluate --dry-run`: the plan is resolved without Ray or models, missing pieces are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import evaluate, runtime
from s3_ray.eval.suite import load_datasets

PAPER = str(Path(evaluate.__file__).parent / "configs" / "s3_paper.yaml")


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise AssertionError("a dry run must not start Ray or Serve")

    monkeypatch.setattr(runtime, "init_ray", boom)
    monkeypatch.setattr(runtime, "deploy_services", boom)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    rc = evaluate.main(args)
    return rc, json.loads(capsys.readouterr().out)


def test_paper_config_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing of the paper's data exists here
    rc, out = _run(["--config", PAPER, "--dry-run"], capsys)
    plan = out["plan"]
    assert rc == 0 and out["problems"] == [] and out["job"] == "evaluate"  # inputs not there yet: listed, not fatal
    assert [d["name"] for d in plan["datasets"]] == ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa",
                                                     "musique", "mirage"]
    assert all(d["limit"] == 3000 for d in plan["datasets"])
    assert plan["budgets"] == {"init_k": 3, "top_k": 8, "keep_per_turn": 3, "max_turns": 3}
    assert plan["retrieval"]["encoder"] == "intfloat/e5-base-v2" and plan["retrieval"]["index_type"] == "flat"
    assert plan["generator"]["model"] == "Qwen/Qwen2.5-14B-Instruct"
    assert [m["name"] for m in plan["methods"]][-1] == "s3"
    assert any("nq/test.jsonl does not exist" in p for p in out["missing"])
    assert any(p.startswith("retrieval.index_dir") for p in out["missing"])


def test_plan_with_local_files_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nq.jsonl").write_text('{"id": "1", "question": "q", "golden_answers": ["a"]}\n')
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "manifest.json").write_text("{}")
    rc, out = _run(["--dry-run", f"retrieval.index_dir={tmp_path / 'index'}",
                    "eval.methods=[naive_rag, ircot, search_o1]", "reward.use_judge=true",
                    f"eval.datasets=[{{name: nq, path: {tmp_path / 'nq.jsonl'}}}]", "eval.limit=5"], capsys)
    assert out["problems"] == [] and out["missing"] == [] and rc == 0
    assert out["plan"]["datasets"][0]["format"] == "flashrag" and out["plan"]["datasets"][0]["exists"]
    assert out["plan"]["methods"][1] == {"name": "ircot", "kind": "ircot", "model": "smollm2-135m-instruct"}
    assert out["plan"]["methods"][2] == {"name": "search_o1", "kind": "search_o1", "model": "smollm2-135m-instruct"}
    assert out["plan"]["judge"] is True


def test_bad_task_cpus_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        evaluate.main(["--dry-run", "--task-cpus", "0"])
    assert "--task-cpus must be > 0" in capsys.readouterr().err


def test_unknown_method_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(["--dry-run", "eval.methods=[naive_rag, magic]"], capsys)
    assert rc == 2 and any("unknown method 'magic'" in p for p in out["problems"])


def test_load_datasets_groups_mirage_tasks(tmp_path: Path) -> None:
    from s3_ray.config import load_config

    mirage = {"medqa": {"1": {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "A"}},
              "bioasq": {"2": {"question": "r", "options": {"A": "yes", "B": "no"}, "answer": "B"}}}
    (tmp_path / "benchmark.json").write_text(json.dumps(mirage))
    cfg = load_config(None, [f"eval.datasets=[{{name: mirage, path: {tmp_path / 'benchmark.json'}}}]"])
    data = load_datasets(cfg)
    assert {k: [i.id for i in v] for k, v in data.items()} == {"medqa": ["medqa/1"], "bioasq": ["bioasq/2"]}
    twice = load_config(None, [f"eval.datasets=[{{name: a, path: {tmp_path / 'benchmark.json'}}}, "
                               f"{{name: b, path: {tmp_path / 'benchmark.json'}}}]"])
    with pytest.raises(ValueError, match="already used"):
        load_datasets(twice)


def test_a_file_beside_the_checkpoints_is_refused_naming_the_folders(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ray_dir = tmp_path / "ray" / "demo"
    for name in ("checkpoint_000000", "checkpoint_000001"):
        (ray_dir / name).mkdir(parents=True)
        (ray_dir / name / "config.json").write_text("{}")
    snapshot = ray_dir / "checkpoint_manager_snapshot.json"
    snapshot.write_text("{}")
    rc, out = _run(["--dry-run", f"--searcher=trained={snapshot}"], capsys)
    [problem] = [p for p in out["problems"] if "checkpoint trained" in p]
    assert rc == 2 and "not a model folder" in problem
    assert str(ray_dir / "checkpoint_000000") in problem and str(ray_dir / "checkpoint_000001") in problem
    # the real run stops on the same plan before Ray starts (the fixture fails any Ray start)
    assert evaluate.main([f"--searcher=trained={snapshot}"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    rc, out = _run(["--dry-run", f"--searcher=trained={ray_dir / 'checkpoint_000001'}"], capsys)
    assert not [p for p in out["problems"] if "checkpoint trained" in p]
