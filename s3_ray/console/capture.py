"""Route everything a job's process writes that is not ours into its log file.

`OutputCapture` points file descriptors 1 and 2 at `<run_dir>/logs/<job>.log`, so the file gets
whatever writes there: Python's `print` and `warnings`, `logging`'s stream handlers, C
extensions (Ray's core worker), and the worker, actor and replica lines that Ray streams to the
driver (`ray.init(log_to_driver=True)`). The console keeps its own copies of the original
streams (`detached`), made before the capture starts. With `echo`, a thread copies what arrives
to the original stderr as well (`--verbose`).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TextIO


def detached(stream: TextIO) -> TextIO:
    """A stream that keeps writing where `stream` writes now, whatever later happens to its file
    descriptor: a copy on a duplicate of the descriptor when `stream` has one, else `stream`
    itself (an in-memory stream, e.g. a test's capture)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    stream.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="replace", closefd=True)


class OutputCapture:
    """While active, file descriptors 1 and 2 write to `log_path` (appended); with `echo`, to the
    original stderr too. Restores both on exit."""

    def __init__(self, log_path: str | os.PathLike[str], echo: bool = False) -> None:
        self.log_path = Path(log_path)
        self.echo = echo
        self._saved: list[int] = []
        self._log: BinaryIO | None = None
        self._pump: threading.Thread | None = None
        self._buffering: list[tuple[TextIO, bool]] = []

    def __enter__(self) -> OutputCapture:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _flush()
        self._log = open(self.log_path, "ab", buffering=0)
        self._saved = [os.dup(1), os.dup(2)]
        if self.echo:
            read_end, write_end = os.pipe()
            # the thread owns its own descriptors: it may outlive the capture if a child holds the pipe
            targets = (os.dup(self._log.fileno()), os.dup(self._saved[1]))
            self._pump = threading.Thread(target=_copy, args=(read_end, *targets), name="s3ray-log-echo",
                                          daemon=True)
            self._pump.start()
            target = write_end
        else:
            target = self._log.fileno()
        os.dup2(target, 1)
        os.dup2(target, 2)
        if self.echo:
            os.close(target)  # descriptors 1 and 2 hold the pipe open now
        for stream in (sys.stdout, sys.stderr):  # our prints reach the file line by line
            if hasattr(stream, "reconfigure") and not getattr(stream, "line_buffering", True):
                self._buffering.append((stream, False))
                stream.reconfigure(line_buffering=True)
        return self

    def note(self, text: str) -> None:
        """Write `text` to the log through descriptor 2, wherever Python's `sys.stderr` points."""
        _flush()
        os.write(2, (text.rstrip("\n") + "\n").encode("utf-8", "replace"))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _flush()
        for stream, line_buffering in self._buffering:
            stream.reconfigure(line_buffering=line_buffering)
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        if self._pump is not None:
            # EOF once no process holds the pipe; a child that inherited it may keep it open
            self._pump.join(timeout=2.0)
        for fd in self._saved:
            os.close(fd)
        if self._log is not None:
            self._log.close()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _copy(read_end: int, *targets: int) -> None:
    """Copy a pipe to every target descriptor until EOF, then close them all (the echo thread)."""
    try:
        while chunk := os.read(read_end, 65536):
            for fd in targets:
                try:
                    os.write(fd, chunk)
                except OSError:
                    pass
    finally:
        for fd in (read_end, *targets):
            os.close(fd)
