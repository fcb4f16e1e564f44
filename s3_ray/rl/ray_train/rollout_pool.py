"""Rollout workers as Ray actors for asynchronous training (`train.async`).

Each actor (`RolloutActor`) holds a `GroupRunner`: its own rollout engine (HFPolicy over its own
copy of the searcher), the retriever client and the reward scorer (the generator Serve app's
client, or any picklable scorer), and returns each group scored as soon as it is done. The actor
runs two threads (`max_concurrency=2`), so a weight push (`set_weights`) arrives while a group is
rolling out; the runner loads it after the current turn and says so.

`RayRolloutPool` is the pool `AsyncSearcherTrainer` drives: `publish` puts the weights in the
object store once (one `ray.put`) and hands every actor a reference; `start` sends a group with
the latest reference (a worker that missed a push fetches it first); `wait` returns finished
groups, and a group whose actor died comes back as lost (None): the trainer queues its question
again and the pool starts a fresh actor in that slot, so the question runs again elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from s3_ray.config import S3Config
from s3_ray.types import QAItem, Trajectory


class RolloutActor:
    """One rollout worker; wrapped with `ray.remote` by `RayRolloutPool`."""

    def __init__(self, cfg: dict[str, Any], retriever: Any, scorer: Any, name: str) -> None:
        from s3_ray.models import load_causal_lm
        from s3_ray.rl.loop.async_rollout import GroupRunner

        config = S3Config.model_validate(cfg)
        model, tok = load_causal_lm(config.searcher.model, num_threads=1,
                                    gpu_setting="train.async.worker_gpus")
        self.runner = GroupRunner(config, model, tok, retriever, scorer, name=name)

    def set_weights(self, generation: int, version: int, box: list[Any]) -> None:
        import ray

        self.runner.set_weights(generation, version, ray.get(box[0]))

    def run(self, item: dict[str, Any], generation: int, version: int, box: list[Any]) -> dict[str, Any]:
        import ray

        q = QAItem(item["id"], item["question"], tuple(item["golden_answers"]), dict(item.get("meta", {})))
        return self.runner.run(q, generation, version, lambda: ray.get(box[0]))

    def stats(self) -> dict[str, float]:
        return {"mid_group_loads": float(self.runner.mid_group_loads), "version": float(self.runner.version)}


class RayRolloutPool:
    def __init__(self, cfg: S3Config, retriever: Any, scorer: Any, log: Callable[[str], None] = print,
                 ready_timeout: float = 600.0) -> None:
        import ray

        a = cfg.train.async_
        self.cfg, self.retriever, self.scorer, self.log = cfg, retriever, scorer, log
        self._cls = ray.remote(RolloutActor).options(
            num_cpus=a.worker_cpus, num_gpus=a.worker_gpus, resources=dict(a.worker_resources) or None,
            max_concurrency=2, max_restarts=0)
        self.actors: dict[int, Any] = {}
        self.spawned = 0
        for slot in range(a.rollout_workers):
            self._spawn(slot)
        # every worker has loaded its engine before training starts: a worker that cannot start fails
        # here, with its own error, and start-up is not counted in the first step's wait
        ray.get([actor.stats.remote() for actor in self.actors.values()], timeout=ready_timeout)
        self.idle = list(range(a.rollout_workers))
        self.running: dict[Any, tuple[int, int]] = {}  # run() ref -> (ticket index, slot)
        self.generation, self.version = -1, 0
        self._box: list[Any] = []

    def _spawn(self, slot: int) -> None:
        self.actors[slot] = self._cls.remote(self.cfg.model_dump(), self.retriever, self.scorer,
                                             f"rollout-{self.spawned}")
        self.spawned += 1

    def free(self) -> int:
        return len(self.idle)

    def publish(self, version: int, weights: dict[str, Any]) -> None:
        import ray

        self.generation += 1
        self.version = version
        self._box = [ray.put(weights)]
        for actor in self.actors.values():
            actor.set_weights.remote(self.generation, version, self._box)  # a dead actor's call just fails

    def start(self, index: int, item: QAItem) -> None:
        slot = self.idle.pop()
        ref = self.actors[slot].run.remote(item.to_dict(), self.generation, self.version, self._box)
        self.running[ref] = (index, slot)

    def wait(self, timeout: float | None = None) -> list[tuple[int, list[Trajectory] | None, dict[str, float]]]:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        if not self.running:
            return []
        done, _ = ray.wait(list(self.running), num_returns=1, timeout=timeout)
        out: list[tuple[int, list[Trajectory] | None, dict[str, float]]] = []
        for ref in done:
            index, slot = self.running.pop(ref)
            try:
                result = ray.get(ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                self.log(f"[s3-ray] rollout worker in slot {slot} died ({type(err).__name__}); starting a new one")
                self._spawn(slot)
                out.append((index, None, {}))
            else:
                out.append((index, result["trajectories"], result["info"]))
            self.idle.append(slot)
        return out

    def close(self) -> None:
        import ray

        for actor in self.actors.values():
            ray.kill(actor)
        self.actors.clear()
        self.running.clear()
