"""The searcher as a product: questions in, selected documents and the search trace out.

`SearchCopilot` wraps a (trained) searcher policy and a retriever so that any RAG application can
put it in front of any generator. It always decodes greedily (a service should answer the same
question the same way) and lets each request tighten the search budgets, never widen them: the
configured `RolloutConfig` is the ceiling an operator sets for cost.

Requests that share a budget run as ONE batched rollout (`run_rollout`), so a Serve replica that
merges concurrent requests pays one policy call per turn for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from s3_ray.agent.policy import HFPolicy, Policy
from s3_ray.agent.rollout import run_rollout
from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.types import Passage, Trajectory, TurnRecord

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.retrieval.base import Retriever


class CopilotRequestError(ValueError):
    """A request is invalid; `field` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Budget:
    """Per-request budget overrides; None keeps the configured value."""

    top_k: int | None = None
    keep_per_turn: int | None = None
    max_turns: int | None = None

    def resolve(self, ceiling: RolloutConfig) -> RolloutConfig:
        """The rollout budget for this request, validated against the configured maxima.

        >>> ceiling = RolloutConfig(top_k=5, keep_per_turn=3, max_turns=3)
        >>> b = Budget(top_k=2, max_turns=1).resolve(ceiling)
        >>> (b.top_k, b.keep_per_turn, b.max_turns)
        (2, 2, 1)
        >>> Budget(top_k=9).resolve(ceiling)
        Traceback (most recent call last):
        ...
        s3_ray.agent.copilot.CopilotRequestError: top_k: must be between 1 and 5, got 9
        >>> Budget(keep_per_turn=0).resolve(RolloutConfig(select_initial=True))
        Traceback (most recent call last):
        ...
        s3_ray.agent.copilot.CopilotRequestError: keep_per_turn: must be between 1 and 2, got 0
        """
        values: dict[str, int] = {}
        # with select_initial a request that keeps nothing would get no documents at all
        least_kept = 1 if ceiling.select_initial else 0
        for name, low in (("top_k", 1), ("keep_per_turn", least_kept), ("max_turns", 0)):
            value = getattr(self, name)
            high = getattr(ceiling, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise CopilotRequestError(name, f"must be an integer, got {type(value).__name__}")
            if not low <= value <= high:
                raise CopilotRequestError(name, f"must be between {low} and {high}, got {value}")
            values[name] = value
        top_k = values.get("top_k", ceiling.top_k)
        if "keep_per_turn" in values:
            keep = values["keep_per_turn"]
            if keep > top_k:
                raise CopilotRequestError("keep_per_turn", f"must not exceed top_k ({top_k}), got {keep}")
        else:
            keep = min(ceiling.keep_per_turn, top_k)  # a smaller top_k shrinks the default selection
        return ceiling.model_copy(update={**values, "top_k": top_k, "keep_per_turn": keep})


@dataclass
class CopilotResult:
    """What one question's search produced. `documents` is what a generator should read."""

    question: str
    documents: list[Passage]
    trace: list[TurnRecord]
    searches: int
    turns: int
    malformed: int
    completed: bool
    searcher_tokens: int
    budget: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_trajectory(cls, traj: Trajectory, budget: RolloutConfig) -> CopilotResult:
        return cls(
            question=traj.item.question,
            documents=list(traj.context),
            trace=list(traj.turns),
            searches=traj.num_searches,
            turns=len(traj.turns),
            malformed=traj.num_malformed,
            completed=traj.metrics.get("completed", 0.0) == 1.0,
            searcher_tokens=sum(traj.loss_mask),
            budget={"init_k": budget.init_k, "top_k": budget.top_k, "keep_per_turn": budget.keep_per_turn,
                    "max_turns": budget.max_turns},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the HTTP response body)."""
        return {
            "question": self.question,
            "documents": [p.to_dict() for p in self.documents],
            "trace": [asdict(t) for t in self.trace],
            "searches": self.searches,
            "turns": self.turns,
            "malformed": self.malformed,
            "completed": self.completed,
            "searcher_tokens": self.searcher_tokens,
            "budget": dict(self.budget),
        }


def _check_questions(questions: Sequence[str]) -> list[str]:
    if isinstance(questions, str):
        raise CopilotRequestError("question", "expected a list of questions, got one string")
    out = []
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise CopilotRequestError("question", f"questions[{i}] must be a non-empty string")
        out.append(q.strip())
    return out


class SearchCopilot:
    """Greedy s3 search for arbitrary questions, with per-request budgets.

    `model` is a registered model name, a local Hugging Face folder (e.g. a trained searcher
    checkpoint) or a hub id. Use `SearchCopilot.with_policy` to supply an already built policy.
    """

    def __init__(self, model: str, retriever: Retriever, rollout: RolloutConfig, searcher: SearcherConfig,
                 max_batch: int = 16) -> None:
        from s3_ray.models import load_causal_lm

        greedy = searcher.model_copy(update={"temperature": 0.0})
        lm, tokenizer = load_causal_lm(model, num_threads=searcher.num_threads, gpu_setting="serve.copilot_gpus")
        self._setup(HFPolicy(lm, tokenizer, greedy), tokenizer, retriever, rollout, greedy, max_batch)
        self.model_id = model

    @classmethod
    def with_policy(cls, policy: Policy, tokenizer: Any, retriever: Retriever, rollout: RolloutConfig,
                    searcher: SearcherConfig, max_batch: int = 16, model_id: str = "custom") -> SearchCopilot:
        """A copilot over a given policy (tests, or a policy shared with a trainer)."""
        self = cls.__new__(cls)
        self._setup(policy, tokenizer, retriever, rollout, searcher.model_copy(update={"temperature": 0.0}),
                    max_batch)
        self.model_id = model_id
        return self

    def _setup(self, policy: Policy, tokenizer: Any, retriever: Retriever, rollout: RolloutConfig,
               searcher: SearcherConfig, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.policy, self.tokenizer, self.retriever = policy, tokenizer, retriever
        self.rollout, self.searcher, self.max_batch = rollout, searcher, max_batch
        self.rollouts = 0  # run_rollout calls so far: how well requests were merged

    def limits(self) -> dict[str, int]:
        """The largest budgets a request may ask for."""
        return {"top_k": self.rollout.top_k, "keep_per_turn": self.rollout.keep_per_turn,
                "max_turns": self.rollout.max_turns}

    def resolve_budgets(self, n: int, budgets: Budget | Sequence[Budget | None] | None) -> list[RolloutConfig]:
        """One validated rollout budget per question."""
        if budgets is None or isinstance(budgets, Budget):
            return [(budgets or Budget()).resolve(self.rollout)] * n
        budgets = list(budgets)
        if len(budgets) != n:
            raise CopilotRequestError("budgets", f"got {len(budgets)} budgets for {n} questions")
        return [(b or Budget()).resolve(self.rollout) for b in budgets]

    def search(self, questions: Sequence[str], budgets: Budget | Sequence[Budget | None] | None = None
               ) -> list[CopilotResult]:
        """Search for every question (same order). Questions with equal budgets share rollouts of
        up to `max_batch` episodes."""
        from s3_ray.types import QAItem

        qs = _check_questions(questions)
        resolved = self.resolve_budgets(len(qs), budgets)
        results: list[CopilotResult | None] = [None] * len(qs)
        groups: dict[RolloutConfig, list[int]] = {}
        for i, b in enumerate(resolved):
            groups.setdefault(b, []).append(i)
        for budget, idx in groups.items():
            for start in range(0, len(idx), self.max_batch):
                chunk = idx[start : start + self.max_batch]
                items = [QAItem(f"q{i}", qs[i], ()) for i in chunk]
                trajs = run_rollout(items, self.policy, self.tokenizer, self.retriever, budget, self.searcher)
                self.rollouts += 1
                for i, traj in zip(chunk, trajs):
                    results[i] = CopilotResult.from_trajectory(traj, budget)
        return [r for r in results if r is not None]
