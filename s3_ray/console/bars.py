"""Progress bars with rate and time left: animated on a terminal, plain lines elsewhere.

On a terminal a bar is a `tqdm` bar. In a pipe, a file, `ray job logs` or a test, an animated
bar would be a stream of carriage returns, so `LineBar` prints one line at each quarter of the
way (and at most every `every_s` seconds in between) and one when it closes. Every bar can be
moved from another thread (`set`), which is how the driver shows work that runs in Ray workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO


def format_seconds(seconds: float) -> str:
    """Seconds as people read them.

    >>> format_seconds(0.04), format_seconds(7.25), format_seconds(59.6), format_seconds(568)
    ('0.0 s', '7.2 s', '60 s', '9 min 28 s')
    >>> format_seconds(7260)
    '2 h 1 min'
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def format_rate(per_second: float, unit: str) -> str:
    """A rate in the direction that reads best: units per second, or seconds per unit when slow.

    >>> format_rate(9.94, "q"), format_rate(0.025, "step"), format_rate(0.0, "q")
    ('9.9 q/s', '40.0 s/step', '- q/s')
    """
    if per_second <= 0:
        return f"- {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{1 / per_second:.1f} s/{unit}"


class Bar:
    """Progress over `total` units (None: unknown), counted from `initial` (work done before).

    `update(n)` adds, `set(n)` moves to an absolute count, `close()` ends the bar; a bar is also a
    context manager. `started` (a `time.monotonic()` value, default now) is when the work it
    counts from `initial` began. This base class draws nothing (a bar for `progress=False`).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 started: float | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.started = time.monotonic() if started is None else started
        self.closed = False
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self._lock:
            target = self.n + n
        self.set(target)

    def set(self, n: int) -> None:
        with self._lock:
            if self.closed or n == self.n:
                return
            self.n = n
        self._moved()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._finish()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Units per second since the bar opened (work done before it opened does not count)."""
        spent = self.elapsed()
        return (self.n - self.initial) / spent if spent > 0 else 0.0

    def _moved(self) -> None:
        """Draw the new count (subclasses)."""

    def _finish(self) -> None:
        """Draw the end state (subclasses)."""

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LineBar(Bar):
    """A bar for streams that are not terminals: a line at 25, 50 and 75 % (at least `min_gap_s`
    seconds after the previous one, so quick work prints only its last line), one after
    `every_s` seconds without any, and a last line on `close` with the time it took.

    >>> lines = []
    >>> bar = LineBar(8, "baseline", "q", write=lines.append, min_gap_s=0)
    >>> for _ in range(8): bar.update()
    >>> bar.close()
    >>> [line.split(" (")[0] for line in lines[:3]], lines[0].split(", ")[0]
    (['baseline: 2/8 q', 'baseline: 4/8 q', 'baseline: 6/8 q'], 'baseline: 2/8 q (25%')
    >>> lines[-1].startswith("baseline: 8/8 q in "), len(lines)
    (True, 4)
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 started: float | None = None, *, write: Callable[[str], None], every_s: float = 30.0,
                 min_gap_s: float = 5.0) -> None:
        super().__init__(total, desc, unit, initial, started)
        self._write = write
        self.every_s = every_s
        self.min_gap_s = min_gap_s
        self._last_line = self.started
        self._quarter = self._quarter_of(initial)

    def _quarter_of(self, n: int) -> int:
        return int(4 * n / self.total) if self.total else 0

    def _moved(self) -> None:
        quarter = self._quarter_of(self.n)
        now = time.monotonic()
        if self.total is not None and self.n >= self.total:
            return  # the closing line says it
        quiet = now - self._last_line
        if (quarter > self._quarter and quiet >= self.min_gap_s) or quiet >= self.every_s:
            self._quarter = max(quarter, self._quarter)
            self._last_line = now
            self._write(self.progress_text())

    def progress_text(self) -> str:
        rate = self.rate()
        if self.total is None:
            return f"{self.desc}: {self.n} {self.unit} ({format_rate(rate, self.unit)})"
        left = (self.total - self.n) / rate if rate > 0 else None
        eta = f", {format_seconds(left)} left" if left is not None else ""
        return (f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%, "
                f"{format_rate(rate, self.unit)}{eta})")

    def _finish(self) -> None:
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        rate = f", {format_rate(self.rate(), self.unit)}" if self.n > self.initial else ""
        self._write(f"{self.desc}: {done} {self.unit} in {format_seconds(self.elapsed())}{rate}")


class TtyBar(Bar):
    """An animated `tqdm` bar on a terminal (rate and time left included)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 started: float | None = None, *, file: TextIO) -> None:
        from tqdm import tqdm

        super().__init__(total, desc, unit, initial, started)
        # disable=False explicitly: the job turns other libraries' bars off with TQDM_DISABLE
        self._bar: Any = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file, leave=True,
                              dynamic_ncols=True, mininterval=0.5, disable=False)
        self._bar.start_t -= time.monotonic() - self.started  # tqdm's clock, moved back as ours

    def _moved(self) -> None:
        self._bar.update(self.n - self._bar.n)

    def _finish(self) -> None:
        self._bar.close()
