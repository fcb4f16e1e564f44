"""The one shape of a dry run's output and its one exit rule (see `s3_ray.plans`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config


class InputError(ValueError):
    """A job cannot start: inputs it needs are missing, or the config contradicts itself (what its
    dry run lists under `missing` and `problems`). Raised before Ray starts or a model loads."""


class Plan:
    """Collects a job's plan, its missing inputs and its problems, then prints them as JSON
    (`emit`, the dry run) or stops a real run that could not succeed (`require`)."""

    def __init__(self, job: str, cfg: S3Config) -> None:
        self.job = job
        self.cfg = cfg
        self.sections: dict[str, Any] = {"config": cfg.model_dump()}
        self.missing: list[str] = []
        self.problems: list[str] = []

    def add(self, key: str, value: Any) -> Any:
        self.sections[key] = value
        return value

    def file(self, path: str | Path, what: str, made_by: str | None = None, is_dir: bool = False) -> dict[str, Any]:
        """A path the job reads; a missing one is listed in `missing` with the job that makes it."""
        p = Path(path).expanduser()
        exists = p.is_dir() if is_dir else p.exists()
        if not exists:
            self.missing.append(f"{what}: {p} does not exist" + (f" (made by `{made_by}`)" if made_by else ""))
        return {"path": str(p), "exists": exists}

    def output(self, path: str | Path) -> dict[str, Any]:
        """A path the job writes; an existing one means the job resumes or overwrites."""
        p = Path(path).expanduser()
        return {"path": str(p), "exists": p.exists()}

    def emit(self) -> int:
        """Print the plan as JSON (stdout); exit status 2 when there are problems, else 0 (missing
        inputs are not fatal)."""
        out = {"job": self.job, "plan": self.sections, "missing": self.missing, "problems": self.problems}
        print(json.dumps(out, indent=2, default=str))
        if self.problems:
            print(f"[s3-ray] dry run of {self.job}: {len(self.problems)} problem(s)", file=sys.stderr)
        return 2 if self.problems else 0

    def require(self) -> None:
        """Raise `InputError` (one line naming every problem and missing input) unless the job can
        start: a real run needs what a dry run only reports.

        >>> from s3_ray.config import load_config
        >>> plan = Plan("evaluate", load_config(None))
        >>> plan.missing.append("checkpoint trained: /x does not exist")
        >>> plan.require()
        Traceback (most recent call last):
        ...
        s3_ray.plans.plan.InputError: evaluate cannot start: checkpoint trained: /x does not exist (`--dry-run` shows the whole plan)
        """
        issues = [*self.problems, *self.missing]
        if issues:
            raise InputError(f"{self.job} cannot start: " + "; ".join(issues) + " (`--dry-run` shows the whole plan)")
