"""Follow files that work running elsewhere appends to, and show its progress on the console.

Training runs in Ray Train workers and evaluation pairs in Ray tasks: their progress reaches the
driver through the files they append one JSON record per line to (`metrics.jsonl`, one record
file per evaluated method). A `Poller` thread reads what is new every half second while the work
runs, and once more when it ends, so the last records are never missed.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3_ray.console.output import Console


class JsonlTail:
    """The complete new lines of a JSONL file, from its end at creation (`from_start=False`) or
    from its beginning; a line still being written is read when it is complete. Lines that are
    not JSON objects are skipped (a progress view must never stop the work it shows)."""

    def __init__(self, path: str | os.PathLike[str], from_start: bool = False) -> None:
        self.path = Path(path)
        self.offset = 0 if from_start or not self.path.is_file() else self.path.stat().st_size
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        size = self.path.stat().st_size
        if size < self.offset:  # replaced or truncated: start over
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        self.offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        records = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
        return records


def count_lines(path: str | os.PathLike[str]) -> int:
    """Complete lines in a file (0 when it does not exist)."""
    p = Path(path)
    if not p.is_file():
        return 0
    with p.open("rb") as fh:
        return sum(1 for line in fh if line.endswith(b"\n"))


class Poller:
    """Calls `tick()` every `interval_s` seconds in a thread while active, then once more on
    exit (after the work it follows has finished). A failing tick is dropped, never raised."""

    def __init__(self, tick: Callable[[], None], interval_s: float = 0.5) -> None:
        self.tick = tick
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="s3ray-progress", daemon=True)

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:  # noqa: BLE001 -- progress display only
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._safe_tick()

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._safe_tick()


@dataclass(frozen=True)
class RecordFile:
    """A file that gets one line per finished unit of work: `label` on the console, `total` units."""

    label: str
    path: Path
    total: int


@contextmanager
def follow_record_files(files: list[RecordFile], console: Console, unit: str = "q") -> Iterator[None]:
    """One bar per file on `console` that moves with the file's line count while the block runs
    (its clock starts with the block); files already complete get none."""
    start = {f.path: count_lines(f.path) for f in files}
    todo = [f for f in files if start[f.path] < f.total]
    bars = {f.path: console.bar(f.total, f.label, unit=unit, initial=start[f.path]) for f in todo}
    tails = {f.path: JsonlTail(f.path) for f in todo}
    counts = dict(start)

    def tick() -> None:
        for f in todo:
            counts[f.path] += len(tails[f.path].read())
            bars[f.path].set(min(counts[f.path], f.total))

    try:
        with Poller(tick):
            yield
    finally:
        for b in bars.values():
            b.close()
