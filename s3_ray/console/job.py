"""One job's console from start to exit: the log folder, verbosity, errors, signals.

    job = JobConsole("train", verbose=args.verbose)
    return job.run(lambda: body(job))        # body: parse the config, check inputs, then
                                             #   with job.logging_to(cfg.run_dir) as console: ...

`run` prints any error as `error: <message>` and returns the exit status (2 for known errors,
see `s3_ray.console.errors`). `logging_to` names `<run_dir>/logs/` in the first line, sends
everything that is not ours there (`OutputCapture`; `--verbose` / `S3RAY_VERBOSE=1` echoes it),
turns other libraries' progress bars off in this process and in the Ray workers it starts
(`worker_env`), and turns SIGTERM into `Terminated` so a stopped job exits through Python
instead of Ray's native stack dump.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from s3_ray.console.bars import format_seconds
from s3_ray.console.capture import OutputCapture, detached
from s3_ray.console.errors import Terminated, exit_status, message
from s3_ray.console.output import INDENT, Console, activate, shown_path

VERBOSE_ENV = "S3RAY_VERBOSE"

QUIET_ENV = {
    "RAY_SERVE_LOG_TO_STDERR": "0",        # Serve controller, proxies and replicas: their log files only
    "TQDM_DISABLE": "1",                   # progress bars of other libraries (bm25s, datasets, ...)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",   # transformers' and the hub's bars (loading, conversion, saving)
}
"""Environment of a job that is not verbose, for this process and every Ray worker it starts:
bars that would only fill the log files with carriage returns are off."""


def logs_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where a run's logs go: `<run_dir>/logs/` (`<job>.log`, `serve/`, `ray` -> Ray's session logs)."""
    return Path(run_dir) / "logs"


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_JOBS: list[JobConsole] = []


def current_job() -> JobConsole | None:
    """The job running in this process (inside `JobConsole.run`), if any."""
    return _JOBS[-1] if _JOBS else None


class JobConsole:
    """The console of job `name` (`s3-ray <name>`), on this process's stdout and stderr."""

    def __init__(self, name: str, verbose: bool = False) -> None:
        self.name = name
        self.verbose = verbose or verbose_from_env()
        err, out = detached(sys.stderr), detached(sys.stdout)
        self._own_streams = [s for s, given in ((err, sys.stderr), (out, sys.stdout)) if s is not given]
        self.console = Console(err=err, out=out)
        self.log_path: Path | None = None
        self.worker_env: dict[str, str] = {}
        self.started = time.perf_counter()
        self._connected_ray = False

    def run(self, body: Callable[[], int | None]) -> int:
        """Run the job; returns its exit status, printing any error (never a bare traceback)."""
        _JOBS.append(self)
        try:
            with activate(self.console):
                status = int(body() or 0)
        except SystemExit:  # argparse and explicit exits keep their own message and status
            raise
        except BaseException as err:  # noqa: BLE001 -- every failure ends here, printed once
            return self._report(err)
        finally:
            _JOBS.remove(self)
            self._close_streams()
        return status

    @contextmanager
    def logging_to(self, run_dir: str | os.PathLike[str]) -> Iterator[Console]:
        """Send everything but the console to `<run_dir>/logs/<job>.log` while the block runs."""
        folder = logs_dir(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{self.name}.log"
        shown = "they are shown here too (--verbose)" if self.verbose else \
            "--verbose or S3RAY_VERBOSE=1 shows them here too"
        self.console.info(f"logs: {shown_path(folder, folder=True)} (Ray, Serve, Train, model loading; {shown})")
        with self._quiet_env(), OutputCapture(self.log_path, echo=self.verbose) as capture, _sigterm_raises():
            capture.note(f"==== s3-ray {self.name} {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} ====")
            try:
                yield self.console
            except BaseException as err:
                # into the log (and, with --verbose, on the console too)
                capture.note("".join(traceback.format_exception(err)))
                raise
            finally:
                self._disconnect_ray(capture)

    def _disconnect_ray(self, capture: OutputCapture) -> None:
        """`ray.shutdown()` while the capture still holds, when this job connected to Ray: the
        last lines Ray streams from its workers belong in the log, not after the job's output."""
        if not self._connected_ray:
            return
        self._connected_ray = False
        import ray

        try:
            ray.shutdown()
        except Exception as err:  # noqa: BLE001 -- the job's own outcome matters more than a teardown error
            capture.note("".join(traceback.format_exception(err)))

    def ray_started(self, context: Any, local: bool) -> None:
        """After `ray.init`: the dashboard line as Ray prints it, a link to Ray's own session logs
        beside ours, and SIGTERM handled by us again (the core worker installs its own handler).
        Ray is shut down (the driver disconnected) when `logging_to` ends."""
        self._connected_ray = True
        url = getattr(context, "dashboard_url", None)
        if url:
            url = url if "://" in url else f"http://{url}"
            start = "Started a local Ray instance." if local else "Connected to Ray cluster."
            self.console.info(f"{start} View the dashboard at {url}")
        session = (getattr(context, "address_info", None) or {}).get("session_dir")
        if self.log_path is not None and session and Path(session, "logs").is_dir():
            link = self.log_path.parent / "ray"
            if link.is_symlink() or not link.exists():
                link.unlink(missing_ok=True)
                link.symlink_to(Path(session, "logs"), target_is_directory=True)
        _handle_sigterm()

    def finished(self) -> None:
        """The last line of a job that succeeded."""
        where = f"; logs in {shown_path(self.log_path.parent, folder=True)}" if self.log_path is not None else ""
        self.console.info(f"s3-ray {self.name} finished in {format_seconds(time.perf_counter() - self.started)}{where}")

    def _report(self, err: BaseException) -> int:
        con = self.console
        con.depth = 0
        if isinstance(err, KeyboardInterrupt):
            con.info(f"error: interrupted{self._where()}")
        elif isinstance(err, Terminated):
            con.info(f"error: stopped by SIGTERM{self._where()}")
        else:
            lines = message(err).splitlines() or [""]
            con.info(f"error: {lines[0]}")
            for line in lines[1:12]:
                con.info(f"{INDENT}{line}")
            if len(lines) > 12:
                con.info(f"{INDENT}... ({len(lines) - 12} more lines)")
            if con.failed_stage:
                con.info(f"{INDENT}in stage {con.failed_stage}")
            if self.log_path is not None:
                con.info(f"{INDENT}log: {shown_path(self.log_path)} (traceback, Ray and Serve lines)")
            elif self.verbose:
                con.info("".join(traceback.format_exception(err)).rstrip())
        return exit_status(err)

    def _where(self) -> str:
        return f" (log: {shown_path(self.log_path)})" if self.log_path is not None else ""

    @contextmanager
    def _quiet_env(self) -> Iterator[None]:
        """QUIET_ENV for this process (keys the user set are left alone) unless verbose; the keys
        added are `worker_env`, which `ray.init` passes on when joining a running cluster."""
        added = {} if self.verbose else {k: v for k, v in QUIET_ENV.items() if k not in os.environ}
        os.environ.update(added)
        self.worker_env = dict(added)
        try:
            yield
        finally:
            for key in added:
                os.environ.pop(key, None)
            self.worker_env = {}

    def _close_streams(self) -> None:
        for stream in self._own_streams:  # the duplicates `detached` made, not the process's streams
            try:
                stream.close()
            except OSError:
                pass
        self._own_streams = []


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _handle_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
