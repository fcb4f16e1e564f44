"""Context methods: each turns questions into the passages the frozen generator will read.

Every method is judged by the same generator and metrics (`s3_ray.eval.runner`), so methods only
differ in the context they produce. Registry: `METHODS` (name -> factory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.eval.base import ContextMethod, MethodOutput
from s3_ray.types import QAItem

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.retrieval.base import Retriever


class NoRetrieval:
    """The generator answers from its own knowledge (the paper's "direct inference")."""

    name = "no_retrieval"

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        return [MethodOutput(passages=[]) for _ in items]


class NaiveRAG:
    """Top-k passages for the question to search for (`QAItem.search_text`: `meta["query"]` when
    set, e.g. MIRAGE without its options): the baseline of Gain Beyond RAG."""

    name = "naive_rag"

    def __init__(self, retriever: Retriever, k: int) -> None:
        self.retriever, self.k = retriever, k

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        hits = self.retriever.search([q.search_text for q in items], self.k)
        return [MethodOutput(passages=[h.passage for h in row], searches=1) for row in hits]


class S3Searcher:
    """A (trained or untrained) searcher policy run through the s3 protocol. The searcher's prompt
    and its initial retrieval use the question to search for (`QAItem.search_text`, as
    `run_rollout` always does); only the frozen generator reads the full question.

    `batch_size` None rolls out every batch the evaluation runner hands over (`generator.batch_size`
    questions) as one batched rollout, so the evaluation has one batch size."""

    def __init__(self, model: str, retriever: Retriever, rollout: RolloutConfig, searcher: SearcherConfig,
                 name: str = "s3", batch_size: int | None = None) -> None:
        from s3_ray.models import load_causal_lm

        self.name = name
        self.retriever, self.rollout_cfg, self.searcher_cfg = retriever, rollout, searcher
        self.batch_size = batch_size
        self.model, self.tokenizer = load_causal_lm(model, num_threads=searcher.num_threads,
                                                   gpu_setting="eval.task_gpus")

    def contexts(self, items: list[QAItem]) -> list[MethodOutput]:
        from s3_ray.agent.policy import HFPolicy
        from s3_ray.agent.rollout import run_rollout

        policy = HFPolicy(self.model, self.tokenizer, self.searcher_cfg)
        out: list[MethodOutput] = []
        step = self.batch_size or max(1, len(items))  # None: the caller's batch is one rollout
        for i in range(0, len(items), step):
            batch = items[i : i + step]
            trajs = run_rollout(batch, policy, self.tokenizer, self.retriever, self.rollout_cfg, self.searcher_cfg)
            out.extend(MethodOutput(passages=t.context, trace=t.turns, searches=t.num_searches, lm_calls=len(t.turns))
                       for t in trajs)
        return out


MethodFactory = Callable[..., ContextMethod]


def _baseline(kind: str, model: str, retriever: Any = None, searcher: Any = None, eval_cfg: Any = None,
              name: str | None = None, **kw: Any) -> ContextMethod:
    """The prompting baselines (`s3_ray.eval.baselines`), budgets from `eval_cfg` (an EvalConfig)."""
    from s3_ray.config import EvalConfig
    from s3_ray.eval.baselines.common import make_lm

    cfg = eval_cfg if eval_cfg is not None else EvalConfig()
    lm = make_lm(model, searcher, cfg)
    label = name or kind
    if kind == "cot":
        from s3_ray.eval.baselines.cot import CoTMethod

        return CoTMethod(lm, name=label)
    if kind == "rewrite":
        from s3_ray.eval.baselines.rewrite import RewriteMethod

        return RewriteMethod(lm, retriever, cfg.rewrite_k, name=label)
    if kind == "ircot":
        from s3_ray.eval.baselines.ircot import IRCoTMethod

        return IRCoTMethod(lm, retriever, cfg.ircot_k, cfg.ircot_steps, name=label)
    if kind == "search_o1":
        from s3_ray.eval.baselines.search_o1 import SearchO1Method

        # Search-o1 shares Search-R1's budget: at most search_r1_turns searches of search_r1_k documents
        return SearchO1Method(lm, retriever, cfg.search_r1_k, cfg.search_r1_turns, name=label)
    if kind != "search_r1":
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    from s3_ray.eval.baselines.search_r1 import SearchR1Method

    return SearchR1Method(lm, retriever, cfg.search_r1_k, cfg.search_r1_turns, name=label)


METHODS: dict[str, MethodFactory] = {
    "no_retrieval": lambda **kw: NoRetrieval(),
    "naive_rag": lambda retriever, rollout, **kw: NaiveRAG(retriever, rollout.init_k),
    "s3": lambda retriever, rollout, searcher, model, name="s3", **kw: S3Searcher(
        model, retriever, rollout, searcher, name=name),
    "cot": lambda **kw: _baseline("cot", **kw),
    "rewrite": lambda **kw: _baseline("rewrite", **kw),
    "ircot": lambda **kw: _baseline("ircot", **kw),
    "search_r1": lambda **kw: _baseline("search_r1", **kw),
    "search_o1": lambda **kw: _baseline("search_o1", **kw),
}

MODEL_FREE = ("no_retrieval", "naive_rag")
"""Methods that load no language model of their own (so their evaluation tasks need no GPU)."""

BASELINES = ("cot", "rewrite", "ircot", "search_r1", "search_o1")
"""Methods that run the prompting LM (`eval.baseline_model`, else `searcher.model`)."""


def build_method(kind: str, **kwargs: Any) -> ContextMethod:
    if kind not in METHODS:
        raise ValueError(f"unknown method {kind!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[kind](**kwargs)
