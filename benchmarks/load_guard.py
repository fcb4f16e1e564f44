"""Benchmarks refuse a busy machine: the load average at start and end goes into every result.

Two torch jobs on 2 cores do not run at half speed each but up to ten times slower, so a figure
taken beside other work says nothing about the code. `start()` reads the 1-minute load average
and stops the benchmark when it is above `MAX_IDLE_LOAD` (unless `--allow-busy`); `finish()`
adds the end reading, and whether the run was marked busy, to the result.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

MAX_IDLE_LOAD = 1.0
"""1-minute load average above which the machine counts as busy at the start of a run."""


def add_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-busy", action="store_true",
                   help=f"run (and write) even when the 1-minute load average is above {MAX_IDLE_LOAD} at the "
                        "start; the result is then marked busy")


def start(allow_busy: bool) -> dict[str, Any]:
    """{"load_avg_1m_start", "busy"}; raises SystemExit on a busy machine unless `allow_busy`."""
    load = os.getloadavg()[0]
    busy = load > MAX_IDLE_LOAD
    if busy and not allow_busy:
        raise SystemExit(f"the machine is busy (1-minute load average {load:.2f} > {MAX_IDLE_LOAD}): a timed run "
                         "beside other work measures that work; wait for it to finish or pass --allow-busy "
                         "(the result is then marked busy)")
    return {"load_avg_1m_start": round(load, 2), "busy": busy, "cpus": os.cpu_count()}


def finish(machine: dict[str, Any]) -> dict[str, Any]:
    """`machine` with the load average at the end of the run."""
    return {**machine, "load_avg_1m_end": round(os.getloadavg()[0], 2)}
