"""The console every job prints: short, ours, and with the rest kept in `<run_dir>/logs/`.

* `output`: `Console` (our lines, results, bars), `Stages` (each stage announced once, then its
  seconds), `active()` / `info()` for library code that reports progress;
* `bars`: progress bars with rate and time left (tqdm on a terminal, plain lines elsewhere);
* `job`: `JobConsole`, a job from start to exit: the log folder and its header line,
  `--verbose` / `S3RAY_VERBOSE=1`, errors as `error: <message>` with their exit status, SIGTERM;
* `capture`: routing this process's stdout / stderr (and what Ray streams from its workers)
  into the job's log file;
* `errors`: which errors are the user's to fix (exit status 2) and how a failure reads;
* `tail`, `training`: progress of work that runs in other processes, read from the files it
  appends to (evaluation records, the training metrics with one line per RL step).

Nothing here imports Ray, torch or transformers.
"""

from s3_ray.console.job import JobConsole, current_job, logs_dir
from s3_ray.console.output import Console, Stages, activate, active, info, shown_path

__all__ = ["Console", "JobConsole", "Stages", "activate", "active", "current_job", "info", "logs_dir", "shown_path"]
