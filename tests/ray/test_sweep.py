"""Ray Tune: budget sweeps that resume after a failed trial, and training sweeps stopped by ASHA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from s3_ray.config import load_config
from s3_ray.types import RewardResult, Trajectory

pytestmark = [pytest.mark.ray]


@pytest.fixture(autouse=True)
def _ship_this_module_by_value():
    # The test doubles live in this module, which Tune's trial processes cannot import by name.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


class FlakyRetriever:
    """Logs every search's k to a file and fails the first search with `fail_k` (once, across processes)."""

    def __init__(self, inner, log: Path, fail_k: int) -> None:
        self.inner, self.log, self.fail_k = inner, log, fail_k

    def search(self, queries, k):
        with self.log.open("a") as fh:
            fh.write(f"{k}\n")
        marker = self.log.with_suffix(".failed")
        if k == self.fail_k and not marker.exists():
            marker.write_text("1")
            raise RuntimeError(f"injected retriever failure (k={k})")
        return self.inner.search(queries, k)


class LazyGenerator:
    """The frozen generator, built where it is first used: trial processes get the config, not the
    loaded model (whose lock does not pickle)."""

    def __init__(self, cfg) -> None:
        self.cfg, self._gen = cfg, None

    def __getstate__(self):
        return {"cfg": self.cfg, "_gen": None}

    def _inner(self):
        from s3_ray.generation import build_generator

        if self._gen is None:
            self._gen = build_generator(self.cfg)
        return self._gen

    @property
    def model_id(self) -> str:
        return self._inner().model_id

    @property
    def decoding(self):
        return self._inner().decoding

    def generate(self, prompts):
        return self._inner().generate(prompts)


class LengthScorer:
    """Reward = searcher tokens / 100: a trial with a larger token budget scores higher, every step."""

    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        return [RewardResult(len(t.response_ids) / 100, {"genacc": len(t.response_ids) / 100}) for t in trajs]


def _setup(tmp_path: Path, **extra):
    from s3_ray.clients import RetrieverClient
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.retrieval.index import build_index, load_retriever

    overrides = {
        "run_dir": str(tmp_path / "run"),
        "retrieval.index_dir": str(tmp_path / "index"),
        "searcher.model": "tiny-random",
        "searcher.max_new_tokens": 8,
        "searcher.max_prompt_tokens": 512,
        "searcher.num_threads": 1,
        "generator.model": "tiny-random",
        "generator.max_new_tokens": 4,
        "generator.cache_path": None,
        "rollout.max_turns": 1,
        "wandb.enabled": False,
        **extra,
    }
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    build_index(resolve_paths(cfg.data).corpus, cfg.retrieval, progress=False)
    return cfg, RetrieverClient.in_process(load_retriever(cfg.retrieval))


def test_budget_sweep_resumes_only_the_failed_trial(ray_session, tmp_path):
    from s3_ray.sweep.report import write_sweep_report
    from s3_ray.sweep.run import run_sweep
    from s3_ray.clients import GeneratorClient

    cfg, inner = _setup(tmp_path, **{"rollout.top_k": 2, "rollout.keep_per_turn": 1, "eval.split": "dev",
                                     "data.test_limit": 2, "sweep.max_concurrent": 2,
                                     "sweep.param_space": {"rollout.init_k": [1, 3]}})
    generator = GeneratorClient.in_process(LazyGenerator(cfg.generator))
    calls = tmp_path / "searches.log"
    retriever = FlakyRetriever(inner, calls, fail_k=3)  # only the init_k=3 trial asks for 3 documents

    first = {r["config"]["rollout.init_k"]: r for r in run_sweep(cfg, retriever, generator, name="budgets")}
    assert "injected retriever failure" in first[3]["error"] and "error" not in first[1], first
    k1_calls = calls.read_text().split().count("1")
    assert k1_calls > 0

    second = run_sweep(cfg, retriever, generator, name="budgets")  # same name: resumes
    by_k = {r["config"]["rollout.init_k"]: r for r in second}
    assert all("error" not in r for r in second), second
    assert calls.read_text().split().count("1") == k1_calls, "the finished init_k=1 trial ran again"
    assert by_k[1] == first[1]  # kept from the first run
    # more initial documents -> a larger context: the trials really ran with their own budgets
    assert by_k[3]["context_docs"] > by_k[1]["context_docs"] >= 1

    md = write_sweep_report(second, tmp_path / "report")
    assert md.read_text().count("\n|") >= 3
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000

    with pytest.raises(Exception, match="another config"):
        run_sweep(cfg.with_overrides({"sweep.param_space": {"rollout.init_k": [1, 2]}}), retriever, generator,
                  name="budgets")


def test_training_sweep_asha_stops_the_weak_trial(ray_session, tmp_path):
    from s3_ray.sweep.report import write_sweep_report
    from s3_ray.sweep.run import run_sweep

    cfg, retriever = _setup(tmp_path, **{
        "train.steps": 3, "train.questions_per_step": 2, "train.group_size": 2, "train.kl_coef": 0.0,
        "train.warmup_steps": 0, "train.lr": 1e-4, "data.train_limit": 8, "train.guard_malformed_rate": None,
        "sweep.mode": "train", "sweep.scheduler": "asha", "sweep.asha_grace_period": 1,
        "sweep.asha_reduction_factor": 2, "sweep.param_space": {"searcher.max_new_tokens": [16, 4]},
    })
    rows = run_sweep(cfg, retriever, generator=None, scorer=LengthScorer())
    by_budget = {r["config"]["searcher.max_new_tokens"]: r for r in rows}
    assert all("error" not in r for r in rows), rows
    strong, weak = by_budget[16], by_budget[4]
    assert strong["steps"] == 3 and not strong["stopped_early"] and len(strong["history"]) == 3
    assert weak["stopped_early"] and weak["steps"] < 3
    assert strong["best"] > weak["best"] and strong["best"] == max(strong["history"])

    md = write_sweep_report(rows, tmp_path / "report", mode="train", metric="genacc")
    assert "| ASHA |" in md.read_text() and "| no |" in md.read_text()
    assert (tmp_path / "report" / "curves.png").stat().st_size > 1000
