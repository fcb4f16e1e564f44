"""Running a test body in a fresh interpreter under a hard deadline.

Process groups (DDP, FSDP) are process-global state, and gloo can block in native code where no
Python timeout reaches it, so those tests run their ranks in a child interpreter that the test
kills after `timeout` seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_isolated(test_file: str, call: str, marker: str, timeout: float) -> str:
    """Import `test_file`'s module in a new interpreter, evaluate `call` in it (e.g.
    "_child()"), and require exit 0 with `marker` printed; returns the child's stdout."""
    path = Path(test_file)
    dirs = [str(path.parent), str(Path(__file__).parent)]  # the test's folder and tests/ (for its helpers)
    code = f"import sys; sys.path[:0] = {dirs!r}; import {path.stem} as m; m.{call}"
    env = os.environ | {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{path.stem}.{call} did not finish in {timeout} s: {err.stderr}")
    assert proc.returncode == 0 and marker in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout
