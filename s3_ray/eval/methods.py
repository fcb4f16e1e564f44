"""Context methods: each turns questions into the passages the frozen generator will read.

Every method is judged by the same generator and metrics (`s3_ray.eval.runner`), so methods only
differ in the context they produce. Registry: `METHODS` (name -> factory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.types import Passage, QAItem, TurnRecord


@dataclass
class MethodOutput:
    passages: list[Passage]
    trace: list[TurnRecord] = field(default_factory=list)
    searches: int = 0


class ContextMethod(Protocol):
    name: str

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]: ...


class NoRetrieval:
    """The generator answers from its own knowledge (the paper's "direct inference")."""

    name = "no_retrieval"

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        return [MethodOutput(passages=[]) for _ in items]


class NaiveRAG:
    """Top-k passages for the question itself: the baseline of Gain Beyond RAG."""

    name = "naive_rag"

    def __init__(self, retriever: Any, k: int) -> None:
        self.retriever, self.k = retriever, k

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        hits = self.retriever.search([q.question for q in items], self.k)
        return [MethodOutput(passages=[h.passage for h in row], searches=1) for row in hits]


class S3Searcher:
    """A (trained or untrained) searcher policy run through the s3 protocol."""

    def __init__(self, model: str, retriever: Any, rollout: RolloutConfig, searcher: SearcherConfig,
                 name: str = "s3", batch_size: int = 8) -> None:
        from s3_ray.models import load_causal_lm

        self.name = name
        self.retriever, self.rollout_cfg, self.searcher_cfg = retriever, rollout, searcher
        self.batch_size = batch_size
        self.model, self.tokenizer = load_causal_lm(model, num_threads=searcher.num_threads)

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        from s3_ray.agent.policy import HFPolicy
        from s3_ray.agent.rollout import run_rollout

        policy = HFPolicy(self.model, self.tokenizer, self.searcher_cfg)
        out: list[MethodOutput] = []
        for i in range(0, len(items), self.batch_size):
            trajs = run_rollout(items[i : i + self.batch_size], policy, self.tokenizer, self.retriever,
                                self.rollout_cfg, self.searcher_cfg)
            out.extend(MethodOutput(passages=t.context, trace=t.turns, searches=t.num_searches) for t in trajs)
        return out


MethodFactory = Callable[..., ContextMethod]

METHODS: dict[str, MethodFactory] = {
    "no_retrieval": lambda **kw: NoRetrieval(),
    "naive_rag": lambda retriever, rollout, **kw: NaiveRAG(retriever, rollout.init_k),
    "s3": lambda retriever, rollout, searcher, model, name="s3", **kw: S3Searcher(
        model, retriever, rollout, searcher, name=name),
}


def build_method(kind: str, **kwargs: Any) -> ContextMethod:
    if kind not in METHODS:
        raise ValueError(f"unknown method {kind!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[kind](**kwargs)
