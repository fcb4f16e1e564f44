"""Asynchronous training (`train.async.max_staleness` S > 0): rollout workers never wait for the update.

`AsyncSearcherTrainer` is a `SearcherTrainer` whose step takes its groups from a `GroupBuffer`
instead of rolling them out itself; the same `fit` loop drives it (checkpoints, guard, resume).
A *pool* of rollout workers does the rollouts and scoring: `InProcessPool`
(`s3_ray.rl.loop.async_rollout`) or Ray actors (`s3_ray.rl.ray_train.rollout_pool`). A pool has

* `free()`: workers without a group; `start(index, item)`: begin a group on one of them with the
  latest published weights; `wait(timeout)`: finished groups, as (ticket index, trajectories
  with rewards, or None when the worker died, info);
* `publish(version, weights)`: new weights for every worker (a worker mid-group loads them after
  its current turn).

A step reads top to bottom: publish the weights if they changed (start, warm-up, resume); start
groups on every free worker while the capacity rule allows; take the step's B groups as soon as
the buffer gives them (handling completions meanwhile: flat groups dropped under dynamic
sampling, lost groups queued again); start more groups so the workers run through the update;
one update with the off-policy correction; publish the new weights.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from s3_ray.config import S3Config
from s3_ray.rl.loop.group_buffer import GroupBuffer
from s3_ray.rl.loop.trainer import SearcherTrainer, _mean_metrics, learned_reward
from s3_ray.types import QAItem, Trajectory


class AsyncSearcherTrainer(SearcherTrainer):
    def __init__(self, cfg: S3Config, model: Any, ref_model: Any, tokenizer: Any, pool: Any,
                 items: list[QAItem], retriever: Any = None, wait_timeout: float = 600.0, log: Any = print) -> None:
        """`retriever` serves the format warm-up only (the rollout workers have their own)."""
        if not cfg.train.async_.enabled:
            raise ValueError("AsyncSearcherTrainer needs train.async.max_staleness > 0 (0 is the synchronous trainer)")
        self._publish_needed = True
        super().__init__(cfg, model, ref_model, tokenizer, retriever=retriever, scorer=None, items=items)
        tc = cfg.train
        self.pool, self.wait_timeout, self.log = pool, wait_timeout, log
        self.by_id = {q.id: q for q in items}
        self.buffer = GroupBuffer(tc.questions_per_step, tc.async_.max_staleness, self._draw,
                                  dynamic=tc.min_signal_groups > 0,
                                  flat_budget=tc.max_sample_rounds * tc.questions_per_step,
                                  observe=self.curriculum.observe if self.curriculum is not None else None)
        self.lost_groups = 0

    def weights_changed(self) -> None:
        super().weights_changed()
        self._publish_needed = True

    def publish(self) -> float:
        """The policy's current weights to every rollout worker, tagged with the buffer's version."""
        from s3_ray.rl.model.weight_sync import iter_policy_weights

        t0 = time.perf_counter()
        weights = {name: t.detach().to("cpu", copy=True) for name, t in iter_policy_weights(self.model)}
        self.pool.publish(self.buffer.version, weights)
        self._publish_needed = False
        return time.perf_counter() - t0

    def _fill(self) -> int:
        started = 0
        while self.pool.free() > 0:
            ticket = self.buffer.admit(self.buffer.version)
            if ticket is None:
                break
            self.pool.start(ticket.index, ticket.item)
            started += 1
        return started

    def _handle(self, events: list[tuple[int, list[Trajectory] | None, dict[str, float]]],
                info: Counter[str]) -> None:
        for index, trajs, extra in events:
            if trajs is None:
                item = self.buffer.fail(index)
                self.lost_groups += 1
                info["lost"] += 1
                self.log(f"[s3-ray] rollout group {index} ({item.id}) was lost with its worker; queued again")
                continue
            info["completed"] += 1
            info["mid_group_loads"] += extra.get("mid_group_loads", 0.0)
            if not self.buffer.complete(index, trajs):
                info["flat_dropped"] += 1

    def train_step(self) -> dict[str, float]:
        from s3_ray.agent.rollout import rollout_stats

        t_sync = self.publish() if self._publish_needed else 0.0
        info: Counter[str] = Counter()
        t0 = time.perf_counter()
        while True:
            self._fill()
            groups = self.buffer.take()
            if groups is not None:
                break
            if not self.buffer.in_flight:
                raise RuntimeError("asynchronous step: no group in flight and none to take (no rollout worker left?)")
            events = self.pool.wait(self.wait_timeout)
            if not events:
                raise TimeoutError(f"no rollout group finished within {self.wait_timeout} s")
            self._handle(events, info)
        wait_s = time.perf_counter() - t0
        staleness = self.buffer.staleness(groups)
        self._fill()  # the workers roll out through the update
        trajs = [t for g in groups for t in g.trajectories]
        signal = [g for g in groups if len({t.reward for t in g.trajectories}) > 1]
        t1 = time.perf_counter()
        if self.cfg.train.min_signal_groups > 0 and not signal:
            metrics = {"update_skipped": 1.0, "loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "adv_mean": 0.0, "adv_std": 0.0}
        else:
            metrics = dict(self.updater.step(trajs))
        t_update = time.perf_counter() - t1
        self.steps_done += 1
        self.buffer.advance()
        self.weights_changed()
        t_sync += self.publish()
        metrics.update(rollout_stats(trajs))
        metrics.update(_mean_metrics(trajs, ("genacc", "gbr", "baseline_genacc", "em", "f1")))
        if self.curriculum is not None:
            metrics.update(self.curriculum.stats())
        hist = Counter(staleness)
        metrics.update({f"async/staleness_{k}": float(hist.get(k, 0)) for k in range(self.buffer.S + 1)})
        metrics.update({
            "async/staleness_mean": sum(staleness) / len(staleness), "async/staleness_max": float(max(staleness)),
            "async/wait_s": wait_s, "async/in_flight": float(len(self.buffer.in_flight)),
            "async/ready": float(len(self.buffer.ready)), "async/flat_dropped": float(info["flat_dropped"]),
            "async/lost_groups": float(info["lost"]), "async/mid_group_loads": float(info["mid_group_loads"]),
            "sample/groups": float(len(groups)), "sample/signal_groups": float(len(signal)),
            "sample/signal_share": len(signal) / len(groups),
        })
        metrics["reward"] = sum(t.reward for t in trajs) / len(trajs)
        if signal:
            metrics["reward_learned"] = learned_reward([g.trajectories for g in signal])
        metrics["context_tokens_mean"] = self._context_tokens(trajs)
        metrics["time/rollout_s"] = wait_s  # what the trainer waited for rollouts and rewards
        metrics["time/reward_s"] = 0.0      # scored on the workers, inside the wait
        metrics["time/update_s"] = t_update
        metrics["time/weight_sync_s"] = t_sync
        if signal:
            metrics["time/per_signal_group_s"] = (wait_s + t_update + t_sync) / len(signal)
        return metrics

    def state(self) -> dict[str, Any]:
        state = super().state()
        state["buffer"] = self.buffer.state()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if "buffer" in state:
            dropped = self.buffer.load_state(state["buffer"], self.by_id, version=int(state["buffer"]["version"]))
            if dropped:
                self.log(f"[s3-ray] resumed: {len(dropped)} buffered groups too old for version "
                         f"{self.buffer.version} were dropped; their questions run again")
