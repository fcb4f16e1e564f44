"""Replica faults: a Serve replica killed while a request is on it; count what was lost or repeated.

    python benchmarks/faults/fault_replicas.py [--rounds 12] [--episodes 8] [--kill-round 4] [--keep] [key=value ...]

Setup as in `fault_common.py`. Two scenarios, in order:

1. retriever: batched rollouts (`run_rollout`, a scripted searcher that always searches
   `max_turns` times) through `RetrieverClient.from_app`; the replica actor is found with
   `ray.util.state.list_actors` and `ray.kill`ed while one retriever call of a rollout is out.
   Serve starts a new replica; the client retries if the call failed. Counted: episodes submitted / finished / lost / finished
   twice, and trajectories whose observations are missing or doubled.
2. generator: `RewardScorer` batches through `GeneratorClient.from_app` (against the naive-RAG
   baseline of the training split, computed first through the apps); the generator replica is
   killed during one reward batch. Counted the same way (rewards set exactly once per trajectory).

Prints a table and writes `benchmarks/results/fault_replicas.json`. Exit status 1 when anything was
lost or repeated. Every loop is bounded (rounds, polling deadlines).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_common import fault_cluster, fault_parser, finish, log, train_baseline  # sibling script
from load_bench import replica_actors  # sibling script

ASSISTANT = "<|im_start|>assistant\n"
QUESTION = re.compile(r"<question>\s*(.*?)\s*</question>", re.DOTALL)


# --------------------------------------------------------------------------------------------
# killing replicas
# --------------------------------------------------------------------------------------------
def find_replica(app: str, deployment: str) -> Any:
    """The (first) ALIVE replica actor of a deployment, found by class name with the state API."""
    actors = replica_actors(app, deployment)
    if not actors:
        raise RuntimeError(f"no ALIVE replica of {app}/{deployment} to kill")
    return actors[0]


class KillOnCall:
    """Wraps a client method: `delay_s` after call number `kill_at` starts, that deployment's
    replica is `ray.kill`ed from a timer thread, so the request is in flight when its replica dies.

    Measures what a caller saw (the time from the kill to the end of the first call that returned
    after it) and, from a watcher thread, when the state API first lists a new ALIVE replica.
    """

    def __init__(self, app: str, deployment: str, kill_at: int, delay_s: float, watch_limit_s: float = 180) -> None:
        self.app, self.deployment, self.kill_at, self.delay_s = app, deployment, kill_at, delay_s
        self.watch_limit_s = watch_limit_s
        self.calls = 0
        self.kill: dict[str, Any] | None = None
        self.caller_waited_s: float | None = None
        self.slowest_call_s = 0.0
        self.new_replica: dict[str, Any] | None = None
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def _kill(self, victim: Any) -> None:
        import ray

        try:
            ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
        except Exception as err:  # noqa: BLE001  (re-raised in the calling thread by `around`)
            self._errors.append(err)
            return
        self.kill = {"actor": victim.name, "pid": victim.pid, "t": time.perf_counter()}
        log(f"killed {victim.name} (pid {victim.pid}) during call {self.kill_at}")
        watcher = threading.Thread(target=self._watch, daemon=True)
        self._threads.append(watcher)
        watcher.start()

    def _watch(self) -> None:
        assert self.kill is not None
        deadline = self.kill["t"] + self.watch_limit_s
        try:
            while time.perf_counter() < deadline:
                fresh = [a for a in replica_actors(self.app, self.deployment) if a.pid != self.kill["pid"]]
                if fresh:
                    self.new_replica = {"new_pid": fresh[0].pid,
                                        "replica_alive_after_s": round(time.perf_counter() - self.kill["t"], 2)}
                    return
                time.sleep(0.2)
        except Exception as err:  # noqa: BLE001  (re-raised by `summary`)
            self._errors.append(err)

    def around(self, fn: Any, *args: Any) -> Any:
        self.calls += 1
        if self.calls == self.kill_at:
            timer = threading.Timer(self.delay_s, self._kill, args=(find_replica(self.app, self.deployment),))
            self._threads.append(timer)
            timer.start()
        t0 = time.perf_counter()
        out = fn(*args)
        t1 = time.perf_counter()
        self.slowest_call_s = max(self.slowest_call_s, t1 - t0)
        if self.calls == self.kill_at:
            self._threads[0].join(timeout=60)
            if self._errors:
                raise RuntimeError(f"could not kill the {self.app} replica") from self._errors[0]
            assert self.kill is not None
            self.kill["landed_mid_call"] = t1 > self.kill["t"]
        if self.kill is not None and self.caller_waited_s is None and t1 > self.kill["t"]:
            self.caller_waited_s = round(t1 - self.kill["t"], 2)
        return out

    def summary(self) -> dict[str, Any]:
        if self.kill is None:
            raise RuntimeError(f"the run ended after {self.calls} calls, before call {self.kill_at}; "
                               "raise --rounds or lower the kill point")
        for t in self._threads:
            t.join(timeout=self.watch_limit_s)
        if self._errors or self.new_replica is None:
            raise RuntimeError(f"no new {self.app} replica seen within {self.watch_limit_s} s of the kill") from (
                self._errors[0] if self._errors else None)
        return {"killed_actor": self.kill["actor"], "killed_pid": self.kill["pid"], "killed_during_call": self.kill_at,
                "kill_delay_s": self.delay_s, "kill_landed_mid_call": self.kill["landed_mid_call"],
                "calls": self.calls, "caller_waited_s": self.caller_waited_s,
                "slowest_call_s": round(self.slowest_call_s, 2), **self.new_replica}


class KillingRetriever:
    def __init__(self, client: Any, killer: KillOnCall) -> None:
        self.client, self.killer = client, killer

    def search(self, queries: list[str], k: int) -> Any:
        return self.killer.around(self.client.search, queries, k)


class KillingGenerator:
    def __init__(self, client: Any, killer: KillOnCall) -> None:
        self.client, self.killer = client, killer

    @property
    def model_id(self) -> str:
        return self.client.model_id

    def answer(self, questions: Any, contexts: Any) -> list[str]:
        return self.killer.around(self.client.answer, questions, contexts)

    def generate(self, prompts: Any) -> list[str]:
        return self.killer.around(self.client.generate, prompts)


class RetryLog(logging.Handler):
    """Collects the clients' retry warnings, so the report shows what each retry was for."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])

    def __enter__(self) -> Self:
        logging.getLogger("s3_ray.clients").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("s3_ray.clients").removeHandler(self)


def exactly_once(submitted: list[tuple[int, str]], finished: list[tuple[int, str]]) -> dict[str, int]:
    """Episodes lost (submitted, never finished) and double-counted (finished more than once).

    >>> exactly_once([(0, "a"), (0, "b")], [(0, "a"), (0, "a")])
    {'submitted': 2, 'finished': 2, 'lost': 1, 'double_counted': 1}
    """
    seen = Counter(finished)
    return {"submitted": len(submitted), "finished": len(finished),
            "lost": sum(1 for key in submitted if seen[key] == 0),
            "double_counted": sum(n - 1 for n in seen.values() if n > 1)}


# --------------------------------------------------------------------------------------------
# 1. retriever killed mid-rollout
# --------------------------------------------------------------------------------------------
def always_search(max_turns: int) -> Any:
    """Searcher script: query (from the question) until `max_turns` blocks were shown, then stop."""

    def script(text: str) -> str:
        m = QUESTION.search(text)
        if m is None:
            raise ValueError("no <question> block in the searcher prompt")
        blocks = text.split(ASSISTANT, 1)[-1].count("</information>")
        keep = "<important_info>[1]</important_info>" if blocks else ""
        if blocks >= max_turns:
            return f"{keep}<search_complete>True</search_complete>"
        query = json.dumps({"query": f"{m.group(1)} {blocks}"})
        return f"{keep}<search_complete>False</search_complete><query>{query}</query>"

    return script


def retriever_fault(cfg: Any, items: list[Any], rounds: int, kill_round: int) -> tuple[dict[str, Any], list[Any]]:
    from s3_ray.agent.policy import ScriptedPolicy
    from s3_ray.agent.rollout import run_rollout
    from s3_ray.clients.retriever import RetrieverClient
    from s3_ray.models import load_causal_lm

    _, tok = load_causal_lm("tiny-random")
    budget = cfg.rollout
    calls_per_round = 1 + budget.max_turns  # init top-k + one batched search per turn
    killer = KillOnCall("retriever", "RetrieverDeployment", kill_at=kill_round * calls_per_round + 2,
                        delay_s=0.002)
    client = KillingRetriever(RetrieverClient.from_app("retriever"), killer)
    policy = ScriptedPolicy(tok, always_search(budget.max_turns))
    searcher = cfg.searcher.model_copy(update={"max_prompt_tokens": 8192})
    submitted, finished, bad = [], [], 0
    last: list[Any] = []
    t0 = time.perf_counter()
    with RetryLog() as retries:
        for r in range(rounds):
            submitted += [(r, it.id) for it in items]
            trajs = run_rollout(items, policy, tok, client, budget, searcher)
            for t in trajs:
                finished.append((r, t.item.id))
                shown = tok.decode(t.response_ids, skip_special_tokens=False).count("</information>")
                if not (t.metrics["searches"] == shown == budget.max_turns and t.metrics["completed"] == 1.0):
                    bad += 1
            last = trajs
    out = {"client_failed_attempts": client.client.failed_attempts, "client_retry_log": retries.messages,
           **exactly_once(submitted, finished), "trajectories_with_missing_or_doubled_observations": bad,
           "rounds": rounds, "episodes_per_round": len(items), "wall_s": round(time.perf_counter() - t0, 2),
           **killer.summary()}
    return out, last


# --------------------------------------------------------------------------------------------
# 2. generator killed mid reward batch
# --------------------------------------------------------------------------------------------
def generator_fault(cfg: Any, trajs: list[Any], rounds: int, kill_round: int) -> dict[str, Any]:
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.reward.fingerprint import open_baseline
    from s3_ray.reward.gain import RewardScorer

    killer = KillOnCall("generator", "GeneratorDeployment", kill_at=kill_round + 1, delay_s=0.1)
    client = KillingGenerator(GeneratorClient.from_app("generator"), killer)
    scorer = RewardScorer(client, open_baseline(cfg, "train"), cfg.reward)
    submitted, finished, bad = [], [], 0
    t0 = time.perf_counter()
    with RetryLog() as retries:
        for r in range(rounds):
            batch = copy.deepcopy(trajs)
            for t in batch:
                t.reward = None
            submitted += [(r, t.item.id) for t in batch]
            results = scorer.score(batch)
            # one finite reward per trajectory, returned and never written into the trajectory
            bad += sum(1 for t, res in zip(batch, results)
                       if t.reward is not None or not math.isfinite(float(res.reward)))
            bad += abs(len(results) - len(batch))
            finished += [(r, t.item.id) for t, _ in zip(batch, results)]
    out = {"client_failed_attempts": client.client.failed_attempts, "client_retry_log": retries.messages,
           **exactly_once(submitted, finished), "trajectories_with_missing_or_mismatched_reward": bad,
           "rounds": rounds, "trajectories_per_batch": len(trajs), "wall_s": round(time.perf_counter() - t0, 2),
           **killer.summary()}
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = fault_parser("fault_replicas.py", __doc__.split("\n\n")[0], "fault_replicas.json")
    p.add_argument("--rounds", type=int, default=12, help="rollouts (and reward batches) per fault run")
    p.add_argument("--episodes", type=int, default=8, help="episodes per batched rollout")
    p.add_argument("--kill-round", type=int, default=4, help="round during which the replica is killed")
    args = p.parse_args(argv)
    if not 0 <= args.kill_round < args.rounds - 1:
        p.error("--kill-round must leave at least one round after it (0 <= kill-round < rounds - 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from s3_ray.data.embedded import load_split

    with fault_cluster(args) as run:
        cfg, report = run.cfg, run.report
        items = load_split(cfg.data, "train")[: args.episodes]

        log("1/2 retriever replica killed during batched rollouts")
        report["retriever_kill"], trajs = retriever_fault(cfg, items, args.rounds, args.kill_round)
        log(json.dumps(report["retriever_kill"]))

        log("naive-RAG baseline of the training split (the reward's baseline)")
        train_baseline(cfg)

        log("2/2 generator replica killed during reward batches")
        report["generator_kill"] = generator_fault(cfg, trajs, args.rounds, args.kill_round)
        log(json.dumps(report["generator_kill"]))
    return finish(report, args.out, summary(report), ok(report))


def ok(report: dict[str, Any]) -> bool:
    r, g = report["retriever_kill"], report["generator_kill"]
    return (r["lost"] == r["double_counted"] == r["trajectories_with_missing_or_doubled_observations"] == 0
            and g["lost"] == g["double_counted"] == g["trajectories_with_missing_or_mismatched_reward"] == 0)


def summary(report: dict[str, Any]) -> str:
    r, g = report["retriever_kill"], report["generator_kill"]
    return "\n".join([
        "| fault | work | lost | double-counted | caller waited s | new replica after s |",
        "|---|---|---|---|---|---|",
        (f"| retriever replica killed mid-rollout | {r['finished']}/{r['submitted']} episodes | {r['lost']} | "
         f"{r['double_counted']} | {r['caller_waited_s']} | {r['replica_alive_after_s']} |"),
        (f"| generator replica killed mid reward batch | {g['finished']}/{g['submitted']} rewards | {g['lost']} | "
         f"{g['double_counted']} | {g['caller_waited_s']} | {g['replica_alive_after_s']} |")])


if __name__ == "__main__":
    raise SystemExit(main())
