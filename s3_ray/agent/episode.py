"""One searcher episode as a pure state machine (no model, no tokenizer, no retriever).

The caller alternates::

    q = ep.step(turn_text)        # parse one searcher turn
    if q is not None:  ep.observe(retriever.search([q], ep.retrieval_k)[0])
    elif not ep.done:  ep.nudge()  # the turn neither searched nor completed
    ... until ep.done

Exact semantics, with budget = `RolloutConfig`:

* **Blocks.** The *init block* (naive top-`init_k` documents in the prompt) is always fully in the
  context and is never subject to selection; ids in a turn that refers to it are only validated.
  With `select_initial` it is selected like a retrieved block instead (see Selection), except that
  an init block without a tag keeps nothing. Every search produces a *retrieved block* numbered 1..n.
* **Dedup.** `observe` drops hits whose passage id was already shown in this episode (init block
  included) or repeats within the hits, and keeps the first `top_k` new ones. To get `top_k` new
  documents, ask the retriever for `retrieval_k` = top_k + number already shown.
* **Selection.** The first ``<important_info>`` tag written after a retrieved block (on any turn,
  valid or not) selects from it: those documents, cut to `keep_per_turn`. A tag whose ids are all
  out of range selects nothing. A block that never got a tag keeps its first `keep_per_turn`
  documents if `keep_unselected`, else none. The selection is applied when the block is *closed*:
  by the next search, by completion or by the end of the episode; that turn's `TurnRecord`
  carries the kept ids in `selected_ids`. With `select_initial` the same holds for the init block:
  the first tag written before the first search (on any turn, valid or not) selects from it (ids
  1..len(init block), cut to `keep_per_turn`); none written keeps none of it.
* **Turns.** A turn with search_complete=True ends the episode. A turn with a query runs it
  (`step` returns it). A turn with neither is invalid: `step` returns None and the caller appends
  `nudge()`. After `max_turns` searches the last block is shown and the next turn is final: the
  episode ends after it, and its query, if any, is not run (`TurnRecord.query` stays None).
* **Generation cap.** At most `max_generations` = max_turns + 2 turns (s3's count: a loop of
  max_turns + 1 generations plus a final one); the turn that reaches the cap is final in the
  same way, so invalid turns cannot loop forever.
* **Context.** `context()` = init documents + kept documents, de-duplicated by id, in order of
  appearance (with `select_initial`: the kept documents only, kept initial ones first). This is
  what the generator reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from s3_ray.agent.protocol import NUDGE, parse_turn, render_information
from s3_ray.config import RolloutConfig
from s3_ray.types import Passage, QAItem, SearchHit, TurnRecord


class EpisodeError(RuntimeError):
    """The episode was driven out of order (e.g. `step` while an observation is pending)."""


class Episode:
    """State of one question's search episode; see the module docstring for the rules."""

    def __init__(self, item: QAItem, init_passages: Sequence[Passage], budget: RolloutConfig) -> None:
        for i, p in enumerate(init_passages):
            if not isinstance(p, Passage):
                raise TypeError(f"init_passages[{i}] for question {item.id!r} is {type(p).__name__}, not Passage")
        self.item = item
        self.budget = budget
        self.init_passages: list[Passage] = list(init_passages)
        self.turns: list[TurnRecord] = []
        self.end_reason: str | None = None  # "complete" | "max_turns" | "max_generations"
        self._shown: set[str] = {p.id for p in self.init_passages}
        self._block: list[Passage] = list(self.init_passages)
        self._block_is_init = True
        self._selection: tuple[int, ...] | None = None
        self._kept: list[Passage] = []
        self._searches = 0
        self._awaiting_observation = False
        self._needs_nudge = False

    @property
    def max_generations(self) -> int:
        """Hard cap on searcher turns, valid or not: max_turns + 2 (as in s3)."""
        return self.budget.max_turns + 2

    @property
    def done(self) -> bool:
        return self.end_reason is not None

    @property
    def searches(self) -> int:
        """Retrieval calls issued so far."""
        return self._searches

    @property
    def needs_observation(self) -> bool:
        """The last `step` returned a query whose results have not been observed yet."""
        return self._awaiting_observation

    @property
    def needs_nudge(self) -> bool:
        """The last turn was invalid and the episode goes on."""
        return self._needs_nudge

    @property
    def retrieval_k(self) -> int:
        """How many hits to request so that `top_k` unseen ones can survive de-duplication."""
        return self.budget.top_k + len(self._shown)

    @property
    def next_turn_is_final(self) -> bool:
        """True when the coming turn ends the episode whatever it says."""
        return self._searches >= self.budget.max_turns or len(self.turns) + 1 >= self.max_generations

    @property
    def block(self) -> list[Passage]:
        """The information block the next turn's ``<important_info>`` ids refer to."""
        return list(self._block)

    def step(self, turn_text: str) -> str | None:
        """Record one searcher turn; return the query to run, or None (finished or invalid)."""
        if self.done:
            raise EpisodeError(f"episode {self.item.id!r} is finished; step() called again")
        if self._awaiting_observation:
            raise EpisodeError(f"episode {self.item.id!r}: observe() the last query before the next step()")
        final = self.next_turn_is_final
        parsed = parse_turn(turn_text, len(self._block))
        record = TurnRecord(text=turn_text, complete=parsed.complete, malformed=parsed.malformed)
        self.turns.append(record)
        self._needs_nudge = False
        selectable = self.budget.select_initial or not self._block_is_init
        if parsed.selected is not None and selectable and self._selection is None:
            self._selection = parsed.selected

        if parsed.complete or final:
            self._close_block(record)
            if parsed.complete:
                self.end_reason = "complete"
            elif self._searches >= self.budget.max_turns:
                self.end_reason = "max_turns"
            else:
                self.end_reason = "max_generations"
            return None
        if parsed.query is None:
            self._needs_nudge = True
            return None
        self._close_block(record)
        record.query = parsed.query
        self._searches += 1
        self._awaiting_observation = True
        return parsed.query

    def observe(self, hits: Sequence[SearchHit]) -> str:
        """Take the results of the pending query; return the observation text to append."""
        if not self._awaiting_observation:
            raise EpisodeError(f"episode {self.item.id!r}: observe() without a pending query")
        new: list[Passage] = []
        for i, hit in enumerate(hits):
            passage = getattr(hit, "passage", None)
            if not isinstance(passage, Passage):
                raise TypeError(f"hit {i} for question {self.item.id!r} is {type(hit).__name__}, not SearchHit")
            if len(new) >= self.budget.top_k:
                break
            if passage.id in self._shown:
                continue
            self._shown.add(passage.id)
            new.append(passage)
        self._block = new
        self._block_is_init = False
        self._selection = None
        self._awaiting_observation = False
        self.turns[-1].retrieved_ids = [p.id for p in new]
        return render_information(new)

    def nudge(self) -> str:
        """The text appended after an invalid turn."""
        if not self._needs_nudge:
            raise EpisodeError(f"episode {self.item.id!r}: nudge() only follows an invalid turn of a live episode")
        return NUDGE

    def context(self) -> list[Passage]:
        """Init documents (all, or with `select_initial` the kept ones) then kept documents,
        de-duplicated by id, in order of appearance."""
        seen: set[str] = set()
        out: list[Passage] = []
        head = [] if self.budget.select_initial else self.init_passages
        for p in [*head, *self._kept]:
            if p.id not in seen:
                seen.add(p.id)
                out.append(p)
        return out

    def _close_block(self, record: TurnRecord) -> None:
        """Apply the selection (or the default) to the current block."""
        if self._block_is_init and not self.budget.select_initial:
            kept: list[Passage] = []  # in the context already, whatever the searcher said
        elif self._selection is not None:
            kept = [self._block[i - 1] for i in self._selection][: self.budget.keep_per_turn]
        elif self._block_is_init:
            kept = []  # select_initial: an initial document reaches the generator only if kept
        elif self.budget.keep_unselected:
            kept = self._block[: self.budget.keep_per_turn]
        else:
            kept = []
        self._kept.extend(kept)
        record.selected_ids = [p.id for p in kept]
        self._block = []
        self._block_is_init = False
        self._selection = None
