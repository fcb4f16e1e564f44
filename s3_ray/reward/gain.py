"""Gain Beyond RAG: how much better the searcher's context makes the frozen generator.

reward = GenAcc(G(q, D_s3)) - GenAcc(G(q, D_RAG)), with the second term read from the
precomputed baseline. s3 also adds GenAcc itself (`add_accuracy`), which on its filtered
training set (baseline always wrong) only rescales the reward.

`reward.metric` picks what the gain is measured in (same shape, searcher's context minus naive
RAG's): `genacc` (s3's), `answer_logprob` (the generator's mean token log-likelihood of the gold
answer, `s3_ray.generation.likelihood`: dense, so a group whose GenAcc is flat still ranks its
contexts) or `mixed` (the GenAcc gain plus `logprob_weight` x the log-likelihood gain). Naive
RAG's context is the trajectory's initial documents, checked against the baseline record's ids.
`format_penalty` is subtracted from an episode that broke the protocol in any turn."""

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

    def check_metric(self) -> None:
        """Fail now, in one line, when `reward.metric` needs log-likelihoods the generator cannot give
        (e.g. an OpenAI-compatible server without prompt log-probs): one probe call, before training."""
        if self.cfg.metric == "genacc":
            return
        from s3_ray.generation.likelihood import AnswerLogprobUnsupported
        from s3_ray.types import Passage

        try:
            [value] = self.client.answer_logprobs(["What is the capital of France?"],
                                                  [[Passage("probe", '"France"\nParis is the capital of France.')]],
                                                  [["Paris"]])
        except AnswerLogprobUnsupported as err:
            raise AnswerLogprobUnsupported(f"reward.metric={self.cfg.metric} needs the gold answer's log-likelihood, "
                                           f"which this generator cannot give: {err}") from None
        if not value <= 0.0:
            raise AnswerLogprobUnsupported(f"reward.metric={self.cfg.metric}: the generator returned {value!r} as a "
                                           "mean log-probability (must be <= 0)")

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
        lp_gain = self._logprob_gains(trajectories) if self.cfg.metric != "genacc" else None
        out: list[RewardResult] = []
        for i, (t, ans, acc, b) in enumerate(zip(trajectories, answers, accs, base)):
            reward = gain_beyond_baseline(acc, b, add_accuracy=self.cfg.add_accuracy)
            metrics = {"genacc": acc, "em": exact_match(ans, t.item.golden_answers),
                       "f1": f1(ans, t.item.golden_answers), "baseline_genacc": b,
                       "gbr": gain_beyond_baseline(acc, b), "context_docs": float(len({p.id for p in t.context}))}
            if lp_gain is not None:
                lp, lp_base = lp_gain[i]
                metrics |= {"answer_logprob": lp, "baseline_answer_logprob": lp_base, "logprob_gain": lp - lp_base}
                if self.cfg.metric == "answer_logprob":
                    reward = lp - lp_base
                else:
                    reward += self.cfg.logprob_weight * (lp - lp_base)
            if self.cfg.format_penalty and t.num_malformed:
                reward -= self.cfg.format_penalty
            metrics["malformed"] = float(t.num_malformed > 0)
            out.append(RewardResult(reward=reward, metrics=metrics))
        return out

    def _logprob_gains(self, trajectories: list[Trajectory]) -> list[tuple[float, float]]:
        """(log-likelihood with the searcher's context, with naive RAG's) per trajectory, in one call;
        naive RAG's context (the initial documents) is scored once per question."""
        naive: dict[str, list] = {}
        for t in trajectories:
            want = list(self.baseline.get(t.item.id).context_ids)
            by_id = {p.id: p for p in t.init_passages}
            got = [p.id for p in t.init_passages]
            # The same documents in another order are the same naive context (BM25 ties may come back
            # in either order); it is scored in the baseline's order, as its GenAcc was.
            if sorted(got) != sorted(want):
                raise BaselineError(f"question {t.item.id!r}: the rollout's initial documents {got} are not the "
                                    f"naive-RAG context {want} of {self.baseline.path}; rebuild the baseline with "
                                    "this retriever and rollout.init_k")
            naive.setdefault(t.item.id, [by_id[i] for i in want])
        qs = {t.item.id: t.item for t in trajectories}
        rows = [(t.item.question, t.context, t.item.golden_answers) for t in trajectories]
        rows += [(qs[q].question, ps, qs[q].golden_answers) for q, ps in naive.items()]
        values = self.client.answer_logprobs([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
        base = dict(zip(naive, values[len(trajectories):]))
        return [(values[i], base[t.item.id]) for i, t in enumerate(trajectories)]
