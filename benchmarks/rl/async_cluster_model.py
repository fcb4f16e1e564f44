"""A discrete-event model of asynchronous RL on a GPU cluster: predicted steps per hour at S = 0, 1, 2.

    python benchmarks/rl/async_cluster_model.py [--steps 400] [--groups-per-step 8] [--out ...]

A plan, not a measurement. It replays the asynchronous loop of `s3_ray.rl.loop.async_trainer`
on a cluster of 8 devices, split two ways: 4 rollout / 2 generator / 2 training, and 4 rollout
devices that also host the generator / 4 training. Questions are admitted and steps take their
groups through the trainer's own `GroupBuffer` (the capacity rule, the staleness-safe choice), so
S = 0 is the synchronous loop and S > 0 the asynchronous one, with:

* a rollout device rolls out one group at a time; its duration is the mean measured group time
  scaled by the group's longest episode over the mean longest episode (a batched rollout runs
  until its longest episode ends) - episode lengths drawn from those the RL proof recorded;
* as implemented (`GroupRunner.run`), the rollout worker holds its device while its group is
  scored: the reward call runs on a generator device (first come first served), or on the rollout
  device itself in the colocated split; at S = 0 the step's rewards are asked once all its groups
  are rolled out (as the synchronous trainer scores its batch after the rollout);
* an update takes the step's B groups on the training devices (data parallel, cost / T), then the
  weights are pushed (the trainer busy for the push; a rollout in flight pauses as long, loading
  them after its current turn); at S = 0 nothing rolls out meanwhile.

Costs come from `benchmarks/results/` (`step_cost.json`: one group of 8 rolled out and scored
alone, the update's positions; `rl_proof.json`: the update per step, mean over seeds;
`weight_sync.json`: a full-weight push) under two device profiles, every assumption printed and
written to `benchmarks/results/async_cluster_model.json`: `this_machine_x8` (8 devices each as
fast as this 2-core machine, the measured costs unscaled) and `7b_h100_assumed` (a 7B searcher
and a 14B generator on H100s: costs scaled by parameter count and by assumed device speed-ups).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

REPORTED = {
    "verl fully-async recipe": "2.35-2.67x on a 7B model over 128 GPUs (streaming alone 1.6x)",
    "ROLL Flash (on Ray)": "2.24-2.72x",
}
"""Peers' reported speed-ups of asynchronous over synchronous RL (issue 31), for comparison only:
other models, episode lengths and clusters."""

SPLITS = {"4 rollout / 2 generator / 2 training": (4, 2, 2), "4 rollout+generator / 4 training": (4, 0, 4)}
"""name -> (rollout devices, generator devices (0: the generator shares the rollout devices), training devices)."""


@dataclass
class Costs:
    """Seconds of one phase: a group's rollout (mean) and reward call, the update per group (one
    device), the weight push per step; and the episode lengths a group's duration is scaled by."""

    rollout_group_s: float
    reward_group_s: float
    update_group_s: float
    push_s: float
    lengths: list[float]
    group_size: int = 8
    heavy_tail_sigma: float = 0.0  # > 0: lengths drawn from a lognormal of this sigma instead (a what-if)

    def sampler(self, seed: int) -> Callable[[], float]:
        """A function drawing one group's rollout seconds: rollout_group_s x its longest episode over
        the mean longest episode of a group (estimated from 4000 draws)."""
        rng = random.Random(seed)

        def longest() -> float:
            if self.heavy_tail_sigma > 0:
                return max(rng.lognormvariate(0.0, self.heavy_tail_sigma) for _ in range(self.group_size))
            return max(rng.choice(self.lengths) for _ in range(self.group_size))

        mean_longest = statistics.fmean(longest() for _ in range(4000))
        return lambda: self.rollout_group_s * longest() / mean_longest


@dataclass
class Result:
    steps_per_hour: float
    busy: dict[str, float] = field(default_factory=dict)  # share of its time each kind of device computes
    # (a rollout device holding its group while a generator scores it counts as idle)
    staleness_mean: float = 0.0


def simulate(costs: Costs, rollout: int, generators: int, trainers: int, B: int, S: int, steps: int,
             seed: int = 0, warm: int | None = None) -> Result:
    """Run the loop for `steps` steps; steps per hour over the steps after the first `warm`
    (default a tenth), so the start-up transient is left out."""
    from s3_ray.rl.loop.group_buffer import GroupBuffer
    from s3_ray.types import QAItem, Trajectory

    if rollout < 1 or trainers < 1 or generators < 0 or B < 1 or S < 0 or steps < 2:
        raise ValueError("need >= 1 rollout and training device, >= 0 generators, B >= 1, S >= 0, steps >= 2")
    warm = max(1, steps // 10) if warm is None else warm
    draw_rollout = costs.sampler(seed)
    counter = iter(range(10**9))
    buffer = GroupBuffer(B, S, lambda n, v, ex: [QAItem(f"q{next(counter)}", "?", ("a",)) for _ in range(n)])
    update_s = costs.update_group_s * B / trainers
    events: list[tuple[float, int, str, Any]] = []
    seq = iter(range(10**12))
    now = 0.0

    def at(t: float, kind: str, data: Any = None) -> None:
        heapq.heappush(events, (t, next(seq), kind, data))

    free_engines = list(range(rollout))
    pause = [0.0] * rollout           # push time an engine owes (a push arrived during its rollout)
    busy = {"rollout": 0.0, "generator": 0.0, "training": 0.0}
    reward_queue: list[tuple[int, int]] = []  # (ticket index, engine)
    held: list[tuple[int, int]] = []          # S = 0: rewards asked once the step's groups are rolled out
    free_gens = list(range(generators))
    trainer_free, pushing = True, False
    done_at: list[float] = []
    stale: list[int] = []

    def admit() -> None:
        while free_engines and not pushing:
            ticket = buffer.admit(buffer.version)
            if ticket is None:
                return
            engine = free_engines.pop()
            at(now + draw_rollout(), "rolled", (ticket.index, engine, now))

    def score(index: int, engine: int) -> None:
        """Ask group `index`'s reward; `engine` is the rollout device holding it (-1: none, S = 0)."""
        if generators == 0 and engine >= 0:  # colocated: the device holding the group answers
            at(now + costs.reward_group_s, "scored", (index, engine, None))
        elif generators == 0 and free_engines:  # colocated at S = 0: any free rollout device answers
            at(now + costs.reward_group_s, "scored", (index, free_engines.pop(), None))
        elif generators > 0 and free_gens:
            at(now + costs.reward_group_s, "scored", (index, engine, free_gens.pop()))
        else:
            reward_queue.append((index, engine))

    def train() -> None:
        nonlocal trainer_free
        if not trainer_free or pushing:
            return
        groups = buffer.take()
        if groups is None:
            return
        stale.extend(buffer.staleness(groups))
        trainer_free = False
        at(now + update_s, "updated")

    admit()
    while len(done_at) < steps:
        now, _, kind, data = heapq.heappop(events)
        if kind == "rolled":
            index, engine, start = data
            if pause[engine] > 0:  # it loaded pushed weights after a turn: it ends that much later
                at(now + pause[engine], "rolled", data)
                pause[engine] = 0.0
                continue
            busy["rollout"] += now - start  # work is counted when it ends: the shares cover finished work
            if S == 0:
                free_engines.append(engine)  # the synchronous trainer scores the whole batch after its rollout
                held.append((index, -1))
                if len(held) == len(buffer.in_flight):
                    for index_, _ in held:
                        score(index_, -1)
                    held.clear()
            else:
                score(index, engine)
        elif kind == "scored":
            index, engine, gen = data
            busy["generator" if gen is not None else "rollout"] += costs.reward_group_s
            buffer.complete(index, [Trajectory(buffer.in_flight[index].item, [1], reward=float(r)) for r in (0, 1)])
            if engine >= 0:
                free_engines.append(engine)
            if gen is not None:
                free_gens.append(gen)
            if reward_queue:  # a generator (or, colocated, a rollout device) is free again
                score(*reward_queue.pop(0))
            train()
        elif kind == "updated":
            pushing = True
            busy["training"] += (update_s + costs.push_s) * trainers  # device-seconds, the push included
            for engine in range(rollout):
                if engine not in free_engines:
                    pause[engine] += costs.push_s
            at(now + costs.push_s, "pushed")
        elif kind == "pushed":
            pushing, trainer_free = False, True
            buffer.advance()
            done_at.append(now)
            train()
        admit()
    span = done_at[-1] - done_at[warm - 1]
    devices = {"rollout": rollout, "generator": max(generators, 1), "training": trainers}
    return Result(3600.0 * (steps - warm) / span, {k: round(v / (now * devices[k]), 3) for k, v in busy.items()},
                  statistics.fmean(stale) if stale else 0.0)


def bound_steps_per_hour(costs: Costs, rollout: int, generators: int, trainers: int, B: int) -> float:
    """No loop beats its busiest device: 3600 / the largest per-step work of one kind of device
    (a rollout device holds its group through the reward call, as implemented)."""
    per_step = {
        "rollout": B * (costs.rollout_group_s + costs.reward_group_s) / rollout,
        "generator": B * costs.reward_group_s / generators if generators else 0.0,
        "training": costs.update_group_s * B / trainers + costs.push_s,
    }
    return 3600.0 / max(per_step.values())


def measured_costs() -> tuple[Costs, dict[str, Any]]:
    """The costs on this machine (2 CPU cores, SmolLM2-135M searcher and generator), from the results files."""
    step = json.loads((RESULTS / "step_cost.json").read_text())
    proof = json.loads((RESULTS / "rl_proof.json").read_text())
    sync = json.loads((RESULTS / "weight_sync.json").read_text())
    seeds = proof["where"]
    update_step = statistics.fmean(w["update_s"] / w["steps"] for w in seeds)
    per_step_traj = proof["config"]["train"]["questions_per_step"] * proof["config"]["train"]["group_size"]
    group = int(step["group"])
    costs = Costs(rollout_group_s=float(step["rollout_s"]), reward_group_s=float(step["reward_s"]),
                  update_group_s=update_step * group / per_step_traj,
                  push_s=float(sync["engines"]["per_step"]["merged"]["seconds"]),
                  lengths=[float(x) for x in step["tokens_per_rollout"]], group_size=group)
    full = next(r for r in step["rows"] if r["variant"].startswith("full, no KL"))
    sources = {
        "rollout_group_s": f"step_cost.json rollout_s: one group of {group} rolled out alone "
                           f"({step['searcher']}), {costs.rollout_group_s:.1f} s",
        "reward_group_s": f"step_cost.json reward_s: that group scored ({step['reward_metric']} reward), "
                          f"{costs.reward_group_s:.1f} s",
        "update_group_s": f"rl_proof.json: update {update_step:.1f} s per step of {per_step_traj} trajectories "
                          f"(mean over seeds) -> {costs.update_group_s:.1f} s per group of {group}",
        "push_s": f"weight_sync.json: a full-weight (LoRA merged) push into a vLLM rollout engine on this machine, "
                  f"{costs.push_s:.1f} s",
        "episode_lengths": f"step_cost.json tokens_per_rollout (tokens after the prompt of each of the group's "
                           f"{group} episodes): {step['tokens_per_rollout']}",
        "update_tflops_here": round(6 * full["trainable_params"] * full["positions"] / full["update_s"] / 1e12, 3),
    }
    return costs, sources


def gpu_costs(here: Costs, here_tflops: float, a: argparse.Namespace) -> tuple[Costs, dict[str, Any]]:
    """The assumed 7B searcher / 14B generator on H100s: every cost scaled by parameters, over an assumed
    device speed-up (rollout and reward decode are memory-bound, the update compute-bound)."""
    searcher_x, generator_x = a.searcher_params / 0.135, a.generator_params / 0.135
    update_speedup = a.gpu_tflops / here_tflops
    costs = Costs(rollout_group_s=here.rollout_group_s * searcher_x / a.decode_speedup,
                  reward_group_s=here.reward_group_s * generator_x / a.decode_speedup,
                  update_group_s=here.update_group_s * searcher_x / update_speedup,
                  push_s=a.searcher_params * 2 / a.push_gbps + a.push_fixed_s,
                  lengths=here.lengths, group_size=here.group_size)
    assumptions = {
        "searcher_params_b": a.searcher_params, "generator_params_b": a.generator_params,
        "rollout_and_reward": f"decode is memory-bound: time x parameters (searcher x{searcher_x:.0f}, generator "
                              f"x{generator_x:.0f}) / {a.decode_speedup:g} (H100 HBM over this machine's memory "
                              "bandwidth, batching as here)",
        "update": f"compute-bound: time x {searcher_x:.0f} / ({a.gpu_tflops:g} TFLOP/s effective on an H100 over "
                  f"{here_tflops:.3f} TFLOP/s measured here = x{update_speedup:.0f})",
        "push": f"bf16 weights ({2 * a.searcher_params:g} GB) broadcast at {a.push_gbps:g} GB/s + {a.push_fixed_s:g} s "
                "to load them into the engine",
        "unmodelled": "kernel launch and Python overheads, engine KV-cache limits, network between nodes",
    }
    return costs, assumptions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/async_cluster_model.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="steps simulated per case")
    p.add_argument("--groups-per-step", type=int, default=8, help="B: groups (questions) per step")
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heavy-tail-sigma", type=float, default=1.0,
                   help="what-if: episode lengths lognormal with this sigma (0: only the recorded lengths)")
    p.add_argument("--searcher-params", type=float, default=7.0, help="billions, 7b_h100_assumed profile")
    p.add_argument("--generator-params", type=float, default=14.0, help="billions, 7b_h100_assumed profile")
    p.add_argument("--decode-speedup", type=float, default=100.0,
                   help="H100 over this machine for decode at the same parameter count (memory bandwidth)")
    p.add_argument("--gpu-tflops", type=float, default=300.0, help="effective bf16 TFLOP/s of an H100 in the update")
    p.add_argument("--push-gbps", type=float, default=25.0, help="GB/s of the weight broadcast")
    p.add_argument("--push-fixed-s", type=float, default=1.0, help="seconds to load pushed weights into an engine")
    p.add_argument("--out", default=str(RESULTS / "async_cluster_model.json"))
    a = p.parse_args(argv)

    here, sources = measured_costs()
    gpu, gpu_assumed = gpu_costs(here, sources["update_tflops_here"], a)
    profiles = {"this_machine_x8": here, "7b_h100_assumed": gpu}
    lengths = {"recorded": 0.0}
    if a.heavy_tail_sigma > 0:
        lengths[f"lognormal_sigma{a.heavy_tail_sigma:g} (what-if)"] = a.heavy_tail_sigma
    rows = []
    for profile, base in profiles.items():
        for tail_name, sigma in lengths.items():
            costs = Costs(**{**base.__dict__, "heavy_tail_sigma": sigma})
            for split, (r, g, t) in SPLITS.items():
                sync = None
                for S in a.staleness:
                    res = simulate(costs, r, g, t, a.groups_per_step, S, a.steps, seed=a.seed)
                    sync = res.steps_per_hour if S == 0 else sync
                    rows.append({"profile": profile, "episode_lengths": tail_name, "split": split, "S": S,
                                 "steps_per_hour": round(res.steps_per_hour, 2),
                                 "speedup_over_S0": round(res.steps_per_hour / sync, 3) if sync else None,
                                 "bound_steps_per_hour": round(bound_steps_per_hour(costs, r, g, t,
                                                                                    a.groups_per_step), 2),
                                 "busy_share": res.busy, "staleness_mean": round(res.staleness_mean, 3)})
    report = {
        "what": "a discrete-event model (a plan, not a measurement) of steps per hour on 8 devices at S = 0, 1, 2",
        "measured": "none on a GPU cluster; the costs below are this machine's (2 CPU cores), as recorded",
        "costs_this_machine": {k: round(v, 3) if isinstance(v, float) else v for k, v in here.__dict__.items()},
        "cost_sources": sources, "costs_7b_h100_assumed": {k: round(v, 3) if isinstance(v, float) else v
                                                          for k, v in gpu.__dict__.items()},
        "assumptions_7b_h100": gpu_assumed,
        "assumptions": [
            f"B = {a.groups_per_step} groups per step of {here.group_size} episodes; {a.steps} steps per case, "
            "steps per hour over all but the first tenth",
            "a rollout device rolls out one group at a time and holds it while the group is scored (as "
            "GroupRunner.run does); the group takes as long as its longest episode",
            "S = 0 asks the step's rewards once all its groups are rolled out, as the synchronous trainer scores "
            "its batch after the rollout; S > 0 scores each group as it finishes",
            "the update is data parallel with perfect scaling over the training devices",
            "a push pauses every rollout in flight for its length; idle devices load during it",
            "reward calls wait first come first served for a free generator device; one call per group",
        ],
        "splits": {k: {"rollout": v[0], "generator": v[1] or "shares the rollout devices", "training": v[2]}
                   for k, v in SPLITS.items()},
        "reported_elsewhere": REPORTED, "rows": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(render(rows))
    print("\nreported elsewhere (other models and clusters): " + "; ".join(f"{k}: {v}" for k, v in REPORTED.items()))
    print(f"a model, not a measurement: every assumption is in {out}")
    return 0


def render(rows: list[dict[str, Any]]) -> str:
    head = f"{'profile':<16} {'episode lengths':<27} {'split':<35} {'S':>2} {'steps/h':>9} {'x S=0':>6} {'bound':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = f"{r['speedup_over_S0']:.2f}" if r["speedup_over_S0"] else "-"
        lines.append(f"{r['profile']:<16} {r['episode_lengths']:<27} {r['split']:<35} {r['S']:>2} "
                     f"{r['steps_per_hour']:>9.1f} {speed:>6} {r['bound_steps_per_hour']:>9.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
