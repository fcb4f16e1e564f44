"""`--dry-run` of every job: the plan is resolved without Ray or models; bad keys fail by name."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from jobs import runtime
from s3_ray.config import ConfigError, load_job_config

CONFIGS = Path(runtime.__file__).parent / "configs"
JOBS = ["train", "sweep", "precompute", "build_index", "serve", "infer", "demo"]
# the paper's budgets keep 3 documents per turn, so a sweep there needs top_k >= 3
PAPER_SWEEP = ["sweep.param_space={rollout.top_k: [5, 8], rollout.max_turns: [2, 3]}"]


@pytest.fixture(autouse=True)
def nothing_heavy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fail the test if a dry run starts Ray or Serve or loads a model; run where nothing exists."""
    import ray

    import s3_ray.models
    import s3_ray.models.registry

    def boom(*a, **k):
        raise AssertionError("a dry run must not start Ray or Serve, nor load a model")

    for target, name in [(runtime, "init_ray"), (runtime, "deploy_services"), (ray, "init"),
                         (s3_ray.models.registry, "load_causal_lm"), (s3_ray.models, "load_causal_lm")]:
        monkeypatch.setattr(target, name, boom)
    monkeypatch.chdir(tmp_path)


def _dry(job: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    rc = importlib.import_module(f"jobs.{job}").main([*args, "--dry-run"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("config", ["demo", "s3_paper"])
@pytest.mark.parametrize("job", JOBS)
def test_dry_run_resolves_shipped_configs(job: str, config: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra = PAPER_SWEEP if (job, config) == ("sweep", "s3_paper") else []
    rc, out = _dry(job, ["--config", str(CONFIGS / f"{config}.yaml"), *extra], capsys)
    # whether the paper config fits its GPUs is tests/unit/test_memory_plan.py's question
    problems = [p for p in out["problems"] if not p.startswith("memory:")]
    assert rc == (2 if out["problems"] else 0), out["problems"]
    assert out["job"] == job and problems == []
    assert out["plan"]["config"]["run_dir"] == str(Path.cwd() / f"runs/{config}")
    # nothing was written: not the run folder, not the index
    assert not (Path.cwd() / "runs").exists()


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("dry_run", [True, False])
def test_bad_key_fails_by_name_in_one_line(job: str, dry_run: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """A ConfigError is the user's to fix: one `error:` line naming the key, exit status 2, no
    traceback, dry run or not (nothing heavy starts either way)."""
    args = ["--config", str(CONFIGS / "demo.yaml"), "train.nope=1", *(["--dry-run"] if dry_run else [])]
    assert importlib.import_module(f"jobs.{job}").main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and "train.nope" in err
    with pytest.raises(ConfigError, match="train.nope"):  # the library itself still raises
        load_job_config(str(CONFIGS / "demo.yaml"), ["train.nope=1"])


def test_train_plan_resources_follow_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry("train", ["train.num_workers=2", "train.cpus_per_worker=0.5", "serve.retriever_replicas=3",
                             "serve.generator_cpus=1.5"], capsys)
    plan = out["plan"]
    assert rc == 0
    assert plan["train_workers"]["num_workers"] == 2 and plan["train_workers"]["total_cpus"] == 1.0
    assert plan["train_workers"]["strategy"] in ("ddp (gloo)", "ddp (nccl)")
    apps = {a["app"]: a for a in plan["serve"]["apps"]}
    assert apps["retriever"]["replicas"] == 3 and apps["generator"]["cpus_per_replica"] == 1.5
    assert plan["serve"]["total_cpus"] == pytest.approx(3 * 0.25 + 1.5)
    assert any(m.startswith("retrieval index") for m in out["missing"])
    assert any(m.startswith("baseline train") and "jobs.precompute" in m for m in out["missing"])


def test_openai_generator_without_url_is_a_problem(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry("precompute", ["generator.backend=openai"], capsys)
    assert rc == 2 and out["problems"] == ["generator.base_url must be set for the openai backend"]


def test_sweep_plan_counts_trials_and_asha(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry("sweep", ["sweep.mode=train", "sweep.scheduler=asha", "sweep.num_samples=2",
                             "sweep.max_concurrent=2", "train.steps=6", "sweep.asha_grace_period=2",
                             "sweep.param_space={train.lr: [1.0e-5, 1.0e-4], train.kl_coef: [0.0, 0.01, 0.1]}"],
                  capsys)
    sweep = out["plan"]["sweep"]
    assert rc == 0
    assert sweep["trials"] == 12 and sweep["peak_cpus"] == 2
    assert sweep["asha"] == {"time_attr": "training_iteration", "max_t": 6, "grace_period": 2, "reduction_factor": 2}
    assert out["plan"]["outputs"]["experiment"]["path"].endswith("runs/demo/ray/sweep-train")
    assert len(out["plan"]["baselines"]) == 1  # lr and kl do not change the baseline's settings


@pytest.mark.parametrize("args, message", [
    (["sweep.param_space={rollout.nope: [1]}"], "unknown config key 'rollout.nope'"),
    (["sweep.param_space={rollout.top_k: [1, 3]}"], "keep_per_turn must not exceed"),
    (["sweep.scheduler=asha"], "needs sweep.mode=train"),
    (["sweep.mode=train", "sweep.scheduler=asha", "train.steps=2", "sweep.asha_grace_period=3"], "exceeds train.steps"),
    (["--resume"], "no sweep to resume"),
])
def test_sweep_plan_problems(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry("sweep", args, capsys)
    assert rc == 2 and any(message in p for p in out["problems"]), out["problems"]


def test_infer_plan_counts_rows_already_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "ctx.jsonl"
    out_file.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c"')  # the torn last row is redone
    rc, out = _dry("infer", ["--out", str(out_file), "--retriever-url", "http://127.0.0.1:9/retrieve"], capsys)
    assert rc == 0 and out["plan"]["outputs"]["contexts"]["rows_done"] == 2
    assert out["plan"]["retriever"] == {"url": "http://127.0.0.1:9/retrieve"}
    assert out_file.read_text().endswith('"c"')  # a dry run never repairs the file


def test_build_index_plan_with_ray_workers(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry("build_index", ["--workers", "4", "--gpus-per-worker", "0.5", "retrieval.backend=dense"], capsys)
    assert rc == 0
    assert out["plan"]["encoding"]["total_gpus"] == 2.0 and out["plan"]["encoding"]["workers"] == 4
    rc, out = _dry("build_index", ["--corpus", "nowhere.jsonl"], capsys)
    assert rc == 0 and any(m.startswith("corpus:") for m in out["missing"])


def test_serve_plan_with_copilot_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry("serve", ["--no-generator", "--copilot", "runs/ckpt"], capsys)
    apps = [a["app"] for a in out["plan"]["serve"]["apps"]]
    assert rc == 0 and apps == ["retriever", "copilot"]
    assert any("copilot model" in m for m in out["missing"])


def test_demo_plan_lists_stages_and_trained_methods(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry("demo", [], capsys)
    names = [m["name"] for m in out["plan"]["evaluate"]["methods"]]
    assert rc == 0 and names == ["naive_rag", "s3_warmup_only", "s3_trained"]  # no untrained row: see demo.yaml
    assert out["missing"] == []  # the demo builds its index and baselines itself
    assert len(out["plan"]["stages"]) == 5


@pytest.mark.parametrize("job", JOBS)
def test_help_lists_dry_run(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        importlib.import_module(f"jobs.{job}").main(["--help"])
    text = capsys.readouterr().out
    assert "--dry-run" in text and "--config" in text
    if job == "sweep":
        assert "--resume" in text and "--name" in text


def test_cli_help_names_the_shared_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli import main

    assert main(["--help"]) == 0
    assert "--dry-run" in capsys.readouterr().out


def test_trial_metrics_keep_finite_numbers() -> None:
    from s3_ray.sweep.trials import scalars

    assert scalars({"reward": 0.5, "step": 2, "note": "x", "kl": float("nan"), "ok": True}) == {"reward": 0.5, "step": 2.0}


def test_gpu_requests_come_from_the_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only submitting process still plans GPU workers and GPU replicas when the config asks."""
    import s3_ray.plans.memory

    # GPU workers get a memory plan; its fake-tensor step is tests/unit/test_memory_plan.py's subject
    step = {"peak": 0, "parts": dict.fromkeys(("weights", "gradients", "optimizer", "activations", "logits"), 2**30),
            "reference": 0, "rollout_copy": 0, "world": 1}
    monkeypatch.setattr(s3_ray.plans.memory, "measured_step", lambda spec: step)
    rc, out = _dry("train", ["train.num_workers=2", "train.gpus_per_worker=1", "serve.retriever_gpus=0.5",
                             "serve.generator_gpus=1"], capsys)
    plan = out["plan"]
    assert rc == 0
    assert plan["train_workers"]["gpus_per_worker"] == 1 and plan["train_workers"]["total_gpus"] == 2
    assert plan["train_workers"]["strategy"] == "ddp (nccl)"
    apps = {a["app"]: a for a in plan["serve"]["apps"]}
    assert apps["retriever"]["gpus_per_replica"] == 0.5 and apps["generator"]["gpus_per_replica"] == 1
    assert plan["serve"]["total_gpus"] == pytest.approx(1.5)


def test_serve_apps_request_the_configured_gpus() -> None:
    from deployments.copilot import CopilotAppArgs
    from deployments.copilot import build_app as build_copilot
    from deployments.generator import GeneratorAppArgs
    from deployments.generator import build_app as build_generator
    from deployments.retriever import RetrieverAppArgs
    from deployments.retriever import build_app as build_retriever
    from s3_ray.config import load_config

    cfg = load_config(CONFIGS / "demo.yaml", ["serve.retriever_gpus=0.5", "serve.generator_gpus=1",
                                               "serve.copilot_gpus=0.25"])
    apps = [build_retriever(RetrieverAppArgs.from_config(cfg)), build_generator(GeneratorAppArgs.from_config(cfg)),
            build_copilot(CopilotAppArgs.from_config(cfg))]
    gpus = [app._bound_deployment.ray_actor_options["num_gpus"] for app in apps]
    assert gpus == [0.5, 1, 0.25]
