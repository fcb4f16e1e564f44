"""The console: our own lines, stage lines with their seconds, progress bars and results.

A job prints through one `Console` (see `s3_ray.console.job`); library code that reports
progress asks for the active one (`active()`), so the same function prints on the job's console
when a job runs it and on plain stderr when a script or a test does. `info` is the module-level
shorthand, picklable as a `log` callable for Ray tasks (in a worker it prints to the worker's
stderr, which Ray keeps in its log files).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from s3_ray.console.bars import Bar, LineBar, TtyBar, format_seconds

INDENT = "   "


class Console:
    """Writes status, progress and errors to `err` and results (tables, JSON, paths) to `out`.

    Streams left as None are the process's `sys.stderr` / `sys.stdout` at each write. Bars
    animate when `err` is a terminal (`interactive`, detected unless given) and are plain lines
    otherwise. Inside a stage (`Stages`) lines and bars are indented under the stage line.
    """

    def __init__(self, err: TextIO | None = None, out: TextIO | None = None,
                 interactive: bool | None = None) -> None:
        self._err = err
        self._out = out
        self._interactive = interactive
        self._lock = threading.RLock()
        self._open_tty_bars = 0
        self.depth = 0
        self.failed_stage: str | None = None

    @property
    def err(self) -> TextIO:
        return self._err if self._err is not None else sys.stderr

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    @property
    def interactive(self) -> bool:
        if self._interactive is not None:
            return self._interactive
        try:
            return bool(self.err.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False

    def info(self, message: str) -> None:
        """One line of ours (several if `message` has newlines), indented to the current stage."""
        text = "\n".join(INDENT * self.depth + line for line in str(message).splitlines() or [""])
        with self._lock:
            if self._open_tty_bars:
                from tqdm import tqdm

                tqdm.write(text, file=self.err)  # above the bars, which are redrawn below
            else:
                self.err.write(text + "\n")
            self.err.flush()

    def result(self, text: str) -> None:
        """What the job produced (a table, a summary, a path), on `out`."""
        with self._lock:
            self.out.write(text.rstrip("\n") + "\n")
            self.out.flush()

    def bar(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
            enabled: bool = True, started: float | None = None) -> Bar:
        """A progress bar (`enabled=False`: one that draws nothing); close it, or use it as a
        context manager. `started`: when the counted work began (`time.monotonic()`; default now)."""
        label = INDENT * self.depth + desc
        if not enabled:
            return Bar(total, label, unit, initial, started)
        if not self.interactive:
            return LineBar(total, label, unit, initial, started, write=self._bar_line)
        return _CountedTtyBar(self, total, label, unit, initial, started)

    def _bar_line(self, text: str) -> None:
        with self._lock:
            self.err.write(text + "\n")
            self.err.flush()


class _CountedTtyBar(TtyBar):
    """A tqdm bar that tells its console while it is open (so lines go above it)."""

    def __init__(self, console: Console, total: int | None, desc: str, unit: str, initial: int,
                 started: float | None) -> None:
        self._console = console
        with console._lock:
            console._open_tty_bars += 1
        super().__init__(total, desc, unit, initial, started, file=console.err)

    def _finish(self) -> None:
        super()._finish()
        with self._console._lock:
            self._console._open_tty_bars -= 1


class Stages:
    """A job's stages, run one after the other: each is announced once (`== name ==`), its own
    lines are indented under it, and it ends with the seconds it took (kept in `seconds`)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or active()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        con = self.console
        con.info(f"== {name} ==")
        t0 = time.perf_counter()
        con.depth += 1
        try:
            yield
        except BaseException:
            con.failed_stage = con.failed_stage or name  # the innermost stage that failed
            raise
        finally:
            con.depth -= 1
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        con.info(f"{INDENT}done in {format_seconds(time.perf_counter() - t0)}")

    def summary(self) -> str:
        """Each finished stage with its time, as people read it, in the order they ran.

        >>> st = Stages.__new__(Stages)
        >>> st.seconds = {"1/2 build the index": 0.1, "2/2 train": 187.0}
        >>> st.summary()
        '1/2 build the index 0.1 s, 2/2 train 3 min 7 s'
        """
        return ", ".join(f"{name} {format_seconds(secs)}" for name, secs in self.seconds.items())


def shown_path(path: str | os.PathLike[str], folder: bool = False) -> str:
    """A path as the console shows it: relative to the working directory when below it (a
    `folder` with a trailing slash).

    >>> shown_path(Path.cwd() / "runs" / "demo" / "nothing.txt"), shown_path("runs/demo/logs", folder=True)
    ('runs/demo/nothing.txt', 'runs/demo/logs/')
    >>> shown_path("/elsewhere/x.log")
    '/elsewhere/x.log'
    """
    p = Path(path)
    try:
        text = str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        text = str(p)
    return text + "/" if folder else text


_DEFAULT = Console()
_ACTIVE: list[Console] = []


def active() -> Console:
    """The console of the job running in this process, else one on plain stderr / stdout."""
    return _ACTIVE[-1] if _ACTIVE else _DEFAULT


@contextmanager
def activate(console: Console) -> Iterator[Console]:
    """Make `console` the one `active()` returns while the block runs."""
    _ACTIVE.append(console)
    try:
        yield console
    finally:
        _ACTIVE.remove(console)


def info(message: str) -> None:
    """`active().info(message)`: a `log` callable that survives pickling into Ray tasks."""
    active().info(message)
