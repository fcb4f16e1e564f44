"""The bounded group buffer of asynchronous training: who may start a group, and which groups a
step trains on, so that no group is older than S policy versions and none is dropped for it.

Words: a *group* is one question's `train.group_size` rollouts; B = `train.questions_per_step`
groups per step; the *version* is the number of steps the trainer has taken (the weights a
rollout worker holds are tagged with it); S = `train.async.max_staleness`. A group is *admitted*
(gets a `Ticket`) when a worker holding the current weights starts it; its version is that of
the weights that write its first turn; it is consumed by the step whose version is at most S
above it.

* **Capacity** (SkyRL's rule): consumed + ready + in-flight groups <= (S + version + 1) x B, the
  step about to be trained being version + 1. So rollout workers run at most S steps ahead.
* **Which groups a step takes.** As soon as B groups are ready, the oldest first (by version,
  then admission), *provided* every group left behind, ready or still in flight, can still be
  consumed in time: for each future step t, the groups due by t (version + S <= t) must fit in
  the steps up to t. Otherwise the step waits for the late groups. With the capacity rule this
  always becomes possible once the late groups finish (earliest deadline first is then
  feasible), so nothing is ever dropped for staleness and no group is used more than S versions
  after it began (tests/unit/test_group_buffer.py checks both over random completion orders).
* **Dynamic sampling.** With `dynamic`, a flat group (all rewards equal) is dropped and does not
  count: its slot is free again. After `flat_budget` flat groups within one step they count (as a
  synchronous step ends after `max_sample_rounds` rounds); a step of flat groups only is skipped
  by the update.
* **Questions** come from `draw(n, version, exclude)` (the question stream or the curriculum), B
  at a time; a group whose worker died goes back to the front of the queue (it runs again on
  another worker: no question lost, none doubled). `observe(id, successes, flat, version)` hears
  every finished group (the curriculum).

Its state (queue, tickets, ready groups with their trajectories) is plain containers, saved with
the trainer's checkpoint; `load_state` re-queues whatever was in flight and any ready group that
the resumed version may no longer use.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from s3_ray.rl.loop.sampling import has_signal, success
from s3_ray.types import Passage, QAItem, Trajectory, TurnRecord


@dataclass(frozen=True)
class Ticket:
    """One admitted group: its admission number, question and version."""

    index: int
    item: QAItem
    version: int


@dataclass
class ReadyGroup:
    ticket: Ticket
    trajectories: list[Trajectory]


class GroupBuffer:
    def __init__(self, groups_per_step: int, max_staleness: int,
                 draw: Callable[[int, int, set[str]], list[QAItem]], dynamic: bool = False, flat_budget: int = 0,
                 observe: Callable[[str, list[int], bool, int], None] | None = None) -> None:
        if groups_per_step < 1 or max_staleness < 0:
            raise ValueError(f"groups_per_step must be >= 1 and max_staleness >= 0, got {groups_per_step}, "
                             f"{max_staleness}")
        self.B, self.S = groups_per_step, max_staleness
        self.draw, self.dynamic, self.flat_budget, self.observe = draw, dynamic, flat_budget, observe
        self.version = 0
        self.consumed = 0
        self.next_index = 0
        self.queue: deque[QAItem] = deque()      # questions drawn, not yet admitted
        self.in_flight: dict[int, Ticket] = {}
        self.ready: list[ReadyGroup] = []
        self.flats = 0                           # flat groups dropped since the last take
        self.dropped_flat = 0                    # over the whole run

    # ------------------------------------------------------------ capacity
    @property
    def capacity(self) -> int:
        return (self.S + self.version + 1) * self.B

    @property
    def admitted(self) -> int:
        return self.consumed + len(self.ready) + len(self.in_flight)

    def can_admit(self) -> bool:
        return self.admitted < self.capacity

    def admit(self, version: int) -> Ticket | None:
        """A group for a worker whose weights are `version`, or None: the buffer is full, or the
        worker must take the current weights first."""
        if version != self.version or not self.can_admit():
            return None
        if not self.queue:
            busy = {t.item.id for t in self.in_flight.values()} | {g.ticket.item.id for g in self.ready}
            self.queue.extend(self.draw(self.B, self.version, busy))
        ticket = Ticket(self.next_index, self.queue.popleft(), version)
        self.next_index += 1
        self.in_flight[ticket.index] = ticket
        return ticket

    # ------------------------------------------------------------ completions
    def complete(self, index: int, trajectories: list[Trajectory]) -> bool:
        """Group `index` finished (with rewards); returns whether it was kept (False: flat, dropped)."""
        ticket = self.in_flight.pop(index)
        if not trajectories or any(t.item.id != ticket.item.id for t in trajectories):
            raise ValueError(f"group {index} ({ticket.item.id!r}) came back with trajectories of other questions")
        signal = has_signal(trajectories)
        if self.observe is not None:
            self.observe(ticket.item.id, [success(t) for t in trajectories], not signal, ticket.version)
        if self.dynamic and not signal and self.flats < self.flat_budget:
            self.flats += 1
            self.dropped_flat += 1
            return False
        self.ready.append(ReadyGroup(ticket, trajectories))
        return True

    def fail(self, index: int) -> QAItem:
        """Group `index` was lost (its worker died): its question goes back to the front of the queue."""
        ticket = self.in_flight.pop(index)
        self.queue.appendleft(ticket.item)
        return ticket.item

    # ------------------------------------------------------------ steps
    def take(self) -> list[ReadyGroup] | None:
        """The B groups of step `version + 1`, or None when they cannot be chosen yet."""
        if len(self.ready) < self.B:
            return None
        order = sorted(self.ready, key=lambda g: (g.ticket.version, g.ticket.index))
        chosen, left = order[: self.B], order[self.B:]
        deadlines = sorted([g.ticket.version + self.S for g in left] + [t.version + self.S
                                                                           for t in self.in_flight.values()])
        for count, due in enumerate(deadlines, start=1):
            if count > (due - self.version) * self.B:  # a late group would miss its last step
                return None
        self.ready = left
        self.consumed += self.B
        self.flats = 0
        return chosen

    def advance(self) -> None:
        """The step's update is done: its weights are version + 1."""
        if self.consumed != (self.version + 1) * self.B:
            raise RuntimeError(f"advance() without a take(): version {self.version}, {self.consumed} consumed")
        self.version += 1

    def staleness(self, groups: list[ReadyGroup]) -> list[int]:
        """Versions between each group's first turn and the step that takes it (call before `advance`)."""
        return [self.version - g.ticket.version for g in groups]

    # ------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {"version": self.version, "next_index": self.next_index, "dropped_flat": self.dropped_flat,
                "queue": [q.id for q in self.queue],
                "in_flight": [[t.index, t.item.id, t.version] for t in self.in_flight.values()],
                "ready": [{"ticket": [g.ticket.index, g.ticket.item.id, g.ticket.version],
                           "trajectories": [trajectory_state(t) for t in g.trajectories]} for g in self.ready]}

    def load_state(self, state: dict[str, Any], items: dict[str, QAItem], version: int) -> list[str]:
        """Resume at `version` (the checkpoint's step); returns the ids of ready groups dropped because
        `version` may no longer use them (begun more than S versions earlier, or after it). Their
        questions and those of the groups in flight go back to the front of the queue."""
        self.version, self.consumed = version, version * self.B
        self.next_index = int(state["next_index"])
        self.dropped_flat = int(state.get("dropped_flat", 0))
        again = [items[qid] for _, qid, _ in state["in_flight"]]
        self.ready, dropped = [], []
        for g in state["ready"]:
            index, qid, v = g["ticket"]
            if version - self.S <= v <= version:
                self.ready.append(ReadyGroup(Ticket(int(index), items[qid], int(v)),
                                             [trajectory_from_state(t) for t in g["trajectories"]]))
            else:
                dropped.append(qid)
                again.append(items[qid])
        self.in_flight = {}
        self.queue = deque(again + [items[qid] for qid in state["queue"]])
        self.flats = 0
        return dropped


def trajectory_state(t: Trajectory) -> dict[str, Any]:
    """A trajectory as plain containers (what a checkpoint may hold)."""
    out = dataclasses.asdict(t)
    out["item"] = t.item.to_dict()
    return out


def trajectory_from_state(d: dict[str, Any]) -> Trajectory:
    item = d["item"]
    return Trajectory(
        item=QAItem(item["id"], item["question"], tuple(item["golden_answers"]), dict(item.get("meta", {}))),
        prompt_ids=list(d["prompt_ids"]), response_ids=list(d["response_ids"]), loss_mask=list(d["loss_mask"]),
        turns=[TurnRecord(**r) for r in d["turns"]],
        init_passages=[Passage(**p) for p in d["init_passages"]], context=[Passage(**p) for p in d["context"]],
        reward=float(d["reward"]), metrics=dict(d["metrics"]),
        behaviour_logprobs=None if d["behaviour_logprobs"] is None else list(d["behaviour_logprobs"]),
        turn_versions=list(d["turn_versions"]))
