"""`s3-ray serve` stopped by SIGTERM (a process manager, `ray job stop`) or SIGINT (Ctrl-C)
deletes the apps it started and says so in one line: no traceback, no native stack dump.

The child starts with SIGINT ignored, as a background shell job (`nohup ... &`) does: `serve`
installs its own handler, so the result does not depend on the signal state of whoever runs
the test."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fakes import bm25_index, free_port

pytestmark = pytest.mark.ray


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal(serve_instance, ray_session, tmp_path: Path, signum: int) -> None:
    index_dir = bm25_index(tmp_path)
    env = {**os.environ, "RAY_ADDRESS": ray_session.address_info["address"]}
    env.pop("S3RAY_VERBOSE", None)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "serve", "--no-generator", f"run_dir={tmp_path / 'run'}",
                             f"retrieval.index_dir={index_dir}", f"serve.port={free_port()}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    seen: list[str] = []
    try:
        while not any(line.startswith("serving on http://") for line in seen):
            line = lines.get(timeout=240)
            assert line is not None, "serve exited early:\n" + "\n".join(seen)
            seen.append(line)
        assert "retriever" in serve_instance.status().applications
        proc.send_signal(signum)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    while (line := lines.get(timeout=30)) is not None:
        seen.append(line)
    how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert seen[-1] == f"stopped ({how}): shut down the retriever app", seen
    assert not any("Traceback" in line or "SIGTERM received" in line or "error" in line for line in seen), seen
    assert "retriever" not in serve_instance.status().applications
