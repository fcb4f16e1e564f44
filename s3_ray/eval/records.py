"""Reading an evaluation's per-question records back (`<out_dir>/<method>.jsonl`, one JSON line
per answered question, as `s3_ray.eval.runner` writes them)."""

from __future__ import annotations

import os

from s3_ray.data.jsonl import DataError, iter_jsonl


def scores_by_question(path: str | os.PathLike[str], key: str = "genacc") -> dict[str, float]:
    """{question id: record[key]} of one method's evaluation file; a line that is not a record
    with an id and a numeric `key` is a `DataError` naming the file and line."""
    out: dict[str, float] = {}
    for n, rec in iter_jsonl(path):
        try:
            out[str(rec["id"])] = float(rec[key])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(path, n, f"not an evaluation record with 'id' and a number {key!r} ({e!r})") from e
    return out
