"""An online question curriculum: spend rollouts on the questions that can still teach something.

GRPO learns only from a group whose rewards differ. A question the searcher always solves, or
never does, gives flat groups: every rollout spent on it is wasted. The curriculum keeps, per
training question, its recent outcomes (success = the generator answered right, or a positive
reward when the scorer reports no accuracy) and

* prefers questions whose recent success rate is strictly between 0 and 1 (up to
  `train.curriculum_focus` of each draw, least recently asked first);
* fills the rest from the seeded question stream (new questions keep coming);
* rests a question that gave `train.curriculum_patience` flat groups in a row for
  `train.curriculum_rest` steps, then retries it: nothing is dropped for good, and a question the
  policy has since learned (or unlearned) comes back into play.

Its state (every question's record and the stream's cursor) is part of the trainer's checkpoint,
so a resumed run continues the same curriculum. Records are keyed by question id, so a run may
resume with another number of workers (each keeps the records of its own questions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from s3_ray.types import QAItem


@dataclass
class QuestionRecord:
    """What the curriculum remembers of one question."""

    outcomes: list[int] = field(default_factory=list)  # recent successes (1) and failures (0), oldest first
    flat_streak: int = 0                               # consecutive groups with identical rewards
    rest_until: int = -1                               # not drawn before this step
    last_step: int = -1                                # step it was last drawn in

    @property
    def rate(self) -> float | None:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else None

    @property
    def learnable(self) -> bool:
        """Its recent success rate is strictly between 0 and 1."""
        rate = self.rate
        return rate is not None and 0.0 < rate < 1.0


class Curriculum:
    """Draws each step's questions from `stream` (a `QuestionStream`) by the rules above.

    >>> from s3_ray.rl.loop.trainer import QuestionStream
    >>> items = [QAItem(f"q{i}", f"Q{i}?", ("a",)) for i in range(6)]
    >>> cur = Curriculum(QuestionStream(items, seed=0), window=4, patience=1, rest=2, focus=0.5)
    >>> first = cur.take(2, step=0)
    >>> cur.observe(first[0].id, [1, 0], flat=False, step=0)   # mixed: learnable
    >>> cur.observe(first[1].id, [0, 0], flat=True, step=0)    # flat once: rests 2 steps
    >>> nxt = cur.take(2, step=1)
    >>> nxt[0].id == first[0].id, first[1].id in {q.id for q in nxt}
    (True, False)
    """

    def __init__(self, stream: Any, window: int = 8, patience: int = 2, rest: int = 4, focus: float = 0.5) -> None:
        if window < 1 or patience < 1 or rest < 0 or not 0.0 <= focus <= 1.0:
            raise ValueError(f"curriculum settings out of range: window={window}, patience={patience}, "
                             f"rest={rest}, focus={focus}")
        self.stream = stream
        self.window, self.patience, self.rest, self.focus = window, patience, rest, focus
        self.by_id: dict[str, QAItem] = {q.id: q for q in stream.items}
        self.records: dict[str, QuestionRecord] = {}
        self._order = {q.id: i for i, q in enumerate(stream.items)}

    def _record(self, qid: str) -> QuestionRecord:
        return self.records.setdefault(qid, QuestionRecord())

    def take(self, n: int, step: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[QAItem]:
        """`n` questions for `step`, none of them in `exclude` (already drawn this step) when avoidable."""
        picked: list[str] = []
        blocked = set(exclude)

        def ok(qid: str) -> bool:
            rec = self.records.get(qid)
            return qid not in blocked and qid not in picked and (rec is None or rec.rest_until <= step)

        learnable = sorted((qid for qid, rec in self.records.items() if rec.learnable and ok(qid)),
                           key=lambda q: (self.records[q].last_step, self._order.get(q, 0)))
        picked += learnable[: min(n, math.ceil(n * self.focus))]
        # the stream supplies the rest; one full pass over it at most
        for _ in range(len(self.stream.items)):
            if len(picked) >= n:
                break
            (q,) = self.stream.take(1)
            if ok(q.id):
                picked.append(q.id)
        if len(picked) < n:  # everything rests or was drawn: the earliest to wake up, then repeats
            waiting = sorted((q for q in self.by_id if q not in picked and q not in blocked),
                             key=lambda q: (self._record(q).rest_until, self._order[q]))
            picked += waiting[: n - len(picked)]
        while len(picked) < n:  # fewer questions than asked for: repeat the stream's
            picked.append(self.stream.take(1)[0].id)
        for qid in picked:
            self._record(qid).last_step = step
        return [self.by_id[q] for q in picked]

    def observe(self, qid: str, successes: list[int], flat: bool, step: int) -> None:
        """One group of `qid` finished: its rollouts' successes, and whether its rewards were all equal."""
        rec = self._record(qid)
        rec.outcomes = (rec.outcomes + [int(bool(s)) for s in successes])[-self.window:]
        rec.flat_streak = rec.flat_streak + 1 if flat else 0
        if rec.flat_streak >= self.patience:
            rec.rest_until = step + 1 + self.rest
            rec.flat_streak = 0

    def stats(self) -> dict[str, float]:
        """How the training questions stand: seen, learnable (0 < rate < 1), resting at the last step."""
        now = max((r.last_step for r in self.records.values()), default=0)
        return {"curriculum/seen": float(len(self.records)),
                "curriculum/learnable": float(sum(r.learnable for r in self.records.values())),
                "curriculum/resting": float(sum(r.rest_until > now + 1 for r in self.records.values()))}

    def state(self) -> dict[str, Any]:
        return {"stream": self.stream.state(),
                "records": {qid: {"outcomes": list(r.outcomes), "flat_streak": r.flat_streak,
                                  "rest_until": r.rest_until, "last_step": r.last_step}
                            for qid, r in self.records.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the stream and the records of this curriculum's own questions (others are ignored:
        they belong to another worker's share)."""
        self.stream.load_state(state["stream"])
        self.records = {qid: QuestionRecord(outcomes=[int(x) for x in r["outcomes"]], flat_streak=int(r["flat_streak"]),
                                            rest_until=int(r["rest_until"]), last_step=int(r["last_step"]))
                        for qid, r in state["records"].items() if qid in self.by_id}
