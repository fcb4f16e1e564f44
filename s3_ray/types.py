"""Plain data types shared by every stage. No torch, no Ray: they cross process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Passage:
    """One corpus entry. `contents` is `"Title"\\ntext` (wiki-18 / MedCorp style)."""

    id: str
    contents: str

    @property
    def title(self) -> str:
        """First line of `contents`, without surrounding double quotes.

        >>> Passage("1", '"Hamlet"\\nA tragedy.').title
        'Hamlet'
        """
        return self.contents.split("\n", 1)[0].strip().strip('"')

    @property
    def text(self) -> str:
        """Everything after the title line.

        >>> Passage("1", '"Hamlet"\\nA tragedy.').text
        'A tragedy.'
        """
        parts = self.contents.split("\n", 1)
        return parts[1].strip() if len(parts) > 1 else ""

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "contents": self.contents}


@dataclass(frozen=True)
class SearchHit:
    passage: Passage
    score: float


@dataclass(frozen=True)
class QAItem:
    """A question with its gold answers. `meta` carries e.g. {"type": "bridge", "hops": 2}."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def search_text(self) -> str:
        """What a searcher or retriever should search for: `meta["query"]` when the data set sets
        one (MIRAGE: the question without its options), else the question. Only the frozen
        generator reads the full question.

        >>> QAItem("1", "Q?\\nOptions:\\nA. x", ("A",), {"query": "Q?"}).search_text
        'Q?'
        >>> QAItem("2", "Who?", ("x",)).search_text
        'Who?'
        """
        query = self.meta.get("query")
        return query if isinstance(query, str) and query.strip() else self.question

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "question": self.question, "golden_answers": list(self.golden_answers)}
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass
class TurnRecord:
    """One searcher generation and what the environment did with it (the search trace)."""

    text: str                                   # the searcher's raw turn text
    query: str | None = None                    # the query that was run, if any
    retrieved_ids: list[str] = field(default_factory=list)   # passage ids shown after this turn
    selected_ids: list[str] = field(default_factory=list)    # passage ids kept from the previous block
    complete: bool = False
    malformed: str | None = None                # why the turn broke the protocol, if it did


@dataclass
class Trajectory:
    """One episode. Token fields are flat lists; the trainer pads them into (B, T) tensors.

    `response_ids` holds every token after the prompt: searcher turns (loss_mask 1) interleaved
    with observations and nudges written by the environment (loss_mask 0).
    """

    item: QAItem
    prompt_ids: list[int]                        # (P,)
    response_ids: list[int] = field(default_factory=list)   # (R,)
    loss_mask: list[int] = field(default_factory=list)      # (R,) 1 = searcher token
    turns: list[TurnRecord] = field(default_factory=list)
    init_passages: list[Passage] = field(default_factory=list)
    context: list[Passage] = field(default_factory=list)    # D_s3: what the generator reads
    reward: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    # (R,) the log-prob each response token was sampled with, at the sampling temperature (0.0 on
    # environment tokens); None when the engine did not report them
    behaviour_logprobs: list[float] | None = None
    turn_versions: list[int] = field(default_factory=list)  # policy version that wrote each searcher turn

    @property
    def num_searches(self) -> int:
        return sum(1 for t in self.turns if t.query is not None)

    @property
    def num_malformed(self) -> int:
        return sum(1 for t in self.turns if t.malformed is not None)


@dataclass(frozen=True)
class RewardResult:
    """What a reward scorer returns for one trajectory: the reward and its parts (e.g. genacc,
    baseline_genacc, gbr), for logging. Scorers never modify the trajectories they score."""

    reward: float
    metrics: dict[str, float] = field(default_factory=dict)

