"""The one training loop (`s3_ray.rl.loop.fit`) without Ray: warm-up as step 0, a checkpoint when one
is due, the guard's stop, and a resume that continues where the checkpoint left off."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fakes import FakeRetriever
from s3_ray.clients import RetrieverClient
from s3_ray.config import load_config
from s3_ray.rl.loop.fit import FitHooks, fit
from s3_ray.rl.model.policy import SearcherPolicy
from s3_ray.rl.loop.trainer import SearcherTrainer
from s3_ray.types import QAItem, RewardResult, Trajectory

ITEMS = [QAItem(f"q{i}", q, ("x",)) for i, q in enumerate(
    ["Who founded Holt Company?", "Where is Cedar Works?", "Which river flows through Alder Town?"])]


class ParityScorer:
    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        return [RewardResult(float(sum(t.response_ids) % 2), {"genacc": 0.0}) for t in trajs]


class NaNScorer:
    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        return [RewardResult(float("nan")) for _ in trajs]


def _setup(scorer, **over):
    torch.manual_seed(0)
    args = {"searcher.model": "tiny-random", "searcher.max_new_tokens": 6, "searcher.max_prompt_tokens": 512,
            "searcher.num_threads": 1, "rollout.max_turns": 1, "train.questions_per_step": 1,
            "train.group_size": 2, "train.steps": 3, "train.checkpoint_every": 2, "train.kl_coef": 0.01,
            "train.warmup_steps": 1, "train.warmup_batch": 1,
            "train.guard_malformed_rate": None, **over}
    cfg = load_config(None, [f"{k}={'null' if v is None else v}" for k, v in args.items()])
    policy = SearcherPolicy.load(cfg)
    trainer = SearcherTrainer(cfg, policy.model, policy.ref, policy.tokenizer,
                              RetrieverClient.in_process(FakeRetriever()), scorer, ITEMS)
    return cfg, policy, trainer


class Recorder:
    """Keeps every report and a copy of every checkpoint folder (fit deletes its own)."""

    def __init__(self, keep: Path) -> None:
        self.keep = keep
        self.reports: list[tuple[int, bool]] = []
        self.logged: list[dict] = []
        self.folders: dict[int, Path] = {}

    def report(self, metrics, checkpoint) -> None:
        step = int(metrics["step"])
        self.reports.append((step, checkpoint is not None))
        if checkpoint is not None:
            self.folders[step] = Path(shutil.copytree(checkpoint, self.keep / f"step{step}"))

    def log(self, metrics, index) -> None:
        self.logged.append(dict(metrics))


def test_fit_reports_warmup_as_step_zero_checkpoints_when_due_and_resumes(tmp_path) -> None:
    cfg, policy, trainer = _setup(ParityScorer())
    rec = Recorder(tmp_path)
    reason = fit(policy, trainer, FitHooks(report=rec.report, log=rec.log), reference_dir=tmp_path / "ref")
    assert reason is None
    # step 0 (warm-up, checkpointed), step 1, step 2 (checkpoint_every=2), step 3 (the last one)
    assert rec.reports == [(0, True), (1, False), (2, True), (3, True)]
    assert (tmp_path / "ref" / "config.json").is_file()  # the warmed-up base a resumed run rebuilds from
    assert [m.get("phase") for m in rec.logged] == ["warmup", None, None, None]
    # the KL reference holds the warmed-up weights (the step-0 checkpoint), while the policy moved on
    from safetensors.torch import load_file

    warmed = load_file(str(rec.folders[0] / "model.safetensors"))
    ref = policy.ref.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in warmed.items())
    loaded = SearcherPolicy.load(cfg).bare.state_dict()  # the weights before the warm-up
    assert any(not torch.equal(loaded[k], v) for k, v in warmed.items())

    # a fresh process resumes from step 2 and runs only step 3, from the same question stream
    _, policy2, trainer2 = _setup(ParityScorer())
    rec2 = Recorder(tmp_path / "again")
    (tmp_path / "again").mkdir()
    fit(policy2, trainer2, FitHooks(report=rec2.report, log=rec2.log), resume=rec.folders[2])
    assert rec2.reports == [(3, True)]
    assert trainer2.stream.state() == trainer.stream.state()
    sd, sd2 = policy.bare.state_dict(), policy2.bare.state_dict()
    assert sd.keys() == sd2.keys()


def test_fit_without_checkpoints_reports_every_step_and_no_warmup(tmp_path) -> None:
    _, policy, trainer = _setup(ParityScorer(), **{"train.steps": 2})
    rec = Recorder(tmp_path)
    fit(policy, trainer, FitHooks(report=rec.report, checkpoints=False, report_warmup=False))
    assert rec.reports == [(1, False), (2, False)]


def test_fit_stops_on_the_guard_with_a_last_checkpoint(tmp_path) -> None:
    _, policy, trainer = _setup(NaNScorer(), **{"train.steps": 3, "train.warmup_steps": 0})
    rec = Recorder(tmp_path)
    reason = fit(policy, trainer, FitHooks(report=rec.report), log=lambda msg: None)
    assert reason is not None and "non-finite loss" in reason
    assert rec.reports == [(1, True)]


def test_fit_ends_after_the_first_step_past_its_wall_time_budget_with_a_checkpoint(tmp_path) -> None:
    """train.max_wall_s: the step that crosses the budget is the last, checkpointed, and its metrics
    say so; every step carries the seconds since the RL loop began. Without a budget all steps run."""
    import time

    _, policy, trainer = _setup(ParityScorer(), **{"train.steps": 5, "train.warmup_steps": 0,
                                                   "train.checkpoint_every": 10, "train.max_wall_s": 0.5})

    def slow_step():  # a step of 0.3 s (the loop is under test, not the update): the second ends past 0.5 s
        time.sleep(0.3)
        trainer.steps_done += 1
        return {"loss": 0.0, "reward": 0.5, "kl": 0.0}

    trainer.train_step = slow_step
    rec = Recorder(tmp_path)
    said: list[str] = []
    assert fit(policy, trainer, FitHooks(report=rec.report, log=rec.log), log=said.append) is None
    assert rec.reports == [(1, False), (2, True)]
    assert [m.get("wall_budget_reached") for m in rec.logged] == [None, 1.0]
    elapsed = [m["time/elapsed_s"] for m in rec.logged]
    assert 0.3 <= elapsed[0] < 0.5 <= elapsed[1]
    assert any("max_wall_s" in line for line in said)
