"""Gain Beyond RAG: how much better the searcher's context makes the frozen generator.

reward = GenAcc(G(q, D_s3)) - GenAcc(G(q, D_RAG)), with the second term read from the
precomputed baseline. s3 also adds GenAcc itself (`add_accuracy`), which on its filtered
training set (baseline always wrong) only rescales the reward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from s3_ray.config import RewardConfig
from s3_ray.reward.baseline_file import BaselineCache, BaselineError
from s3_ray.reward.judge import batch_genacc
from s3_ray.reward.metrics import exact_match, f1
from s3_ray.types import RewardResult, Trajectory

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.generation.base import Answerer


def gain_beyond_baseline(acc: float, baseline_acc: float, add_accuracy: bool = False) -> float:
    """GBR = acc - baseline_acc, plus acc again when `add_accuracy` (s3's training reward).

    >>> gain_beyond_baseline(1.0, 0.0), gain_beyond_baseline(0.0, 1.0), gain_beyond_baseline(1.0, 1.0)
    (1.0, -1.0, 0.0)
    >>> [gain_beyond_baseline(a, b, add_accuracy=True) for a, b in [(1, 0), (1, 1), (0, 0), (0, 1)]]
    [2.0, 1.0, 0.0, -1.0]
    """
    gbr = float(acc) - float(baseline_acc)
    return gbr + float(acc) if add_accuracy else gbr


class RewardScorer:
    """Scores finished trajectories: one batched answer call, GenAcc, minus the cached baseline."""

    def __init__(self, generator_client: Answerer, baseline: BaselineCache, cfg: RewardConfig) -> None:
        s = baseline.settings
        if cfg.baseline != s.method:
            raise BaselineError(f"reward.baseline={cfg.baseline!r} but {baseline.path} holds method {s.method!r}")
        if cfg.use_judge != s.judge:
            raise BaselineError(f"reward.use_judge={cfg.use_judge} but {baseline.path} was scored with judge={s.judge}")
        if generator_client.model_id != s.generator:
            raise BaselineError(
                f"generator {generator_client.model_id!r} but {baseline.path} was made with {s.generator!r}"
            )
        self.client = generator_client
        self.baseline = baseline
        self.cfg = cfg
        self.last_call: dict[str, float] = {}  # what the last `score` cost: answers, distinct contexts, cache hits

    def _cache_hits(self) -> float | None:
        stats = getattr(self.client, "stats", None)
        if not callable(stats):
            return None
        hits = stats().get("cache_hits")
        return float(hits) if hits is not None else None

    def score(self, trajectories: list[Trajectory]) -> list[RewardResult]:
        """One `RewardResult` per trajectory, in order; the trajectories are not modified.

        Baselines are looked up first, so a missing one fails before any generation is spent.
        """
        if not trajectories:
            return []
        base = [self.baseline.get(t.item.id).genacc for t in trajectories]
        hits_before = self._cache_hits()
        answers = self.client.answer([t.item.question for t in trajectories], [t.context for t in trajectories])
        hits_after = self._cache_hits()
        self.last_call = {"answers": float(len(trajectories)),
                          "distinct_contexts": float(len({(t.item.id, tuple(p.id for p in t.context))
                                                          for t in trajectories}))}
        if hits_before is not None and hits_after is not None:  # one replica's counter: a lower bound
            self.last_call["cache_hits"] = hits_after - hits_before
        golds = [t.item.golden_answers for t in trajectories]
        accs = batch_genacc(answers, golds, judge_with=self.client if self.cfg.use_judge else None)
        out: list[RewardResult] = []
        for t, ans, acc, b in zip(trajectories, answers, accs, base):
            out.append(RewardResult(
                reward=gain_beyond_baseline(acc, b, add_accuracy=self.cfg.add_accuracy),
                metrics={"genacc": acc, "em": exact_match(ans, t.item.golden_answers),
                         "f1": f1(ans, t.item.golden_answers), "baseline_genacc": b,
                         "gbr": gain_beyond_baseline(acc, b), "context_docs": float(len({p.id for p in t.context}))},
            ))
        return out
