"""The plan of `python -m jobs.infer`: questions, method and searcher, which retriever answers,
and the output file with the rows already in it."""

from __future__ import annotations

from pathlib import Path

from s3_ray.config import S3Config
from s3_ray.plans.entries import budgets, data_entry, index_entry, model_entry, serve_entry
from s3_ray.plans.plan import Plan


def infer_plan(cfg: S3Config, split: str, method: str, searcher: str | None, out: Path, batch_size: int,
               serve: bool = False, retriever_url: str | None = None) -> Plan:
    """The retriever is `retriever_url`, else the Serve app (`serve`), else the index in-process."""
    plan = Plan("infer", cfg)
    plan.add("method", {"name": method, "searcher": model_entry(searcher, "searcher", plan) if searcher else None,
                        "budgets": budgets(cfg), "batch_size": batch_size})
    plan.add("data", data_entry(cfg, plan, [split]))
    if retriever_url:
        plan.add("retriever", {"url": retriever_url})
    elif serve:
        plan.add("retriever", {"serve": serve_entry(cfg, plan, generator=False), "index": index_entry(cfg, plan)})
    else:
        plan.add("retriever", {"in_process": index_entry(cfg, plan)})
    rows = 0
    if out.is_file():
        with out.open("rb") as fh:
            rows = sum(1 for line in fh if line.endswith(b"\n"))  # a torn last row is redone, not done
    plan.add("outputs", {"contexts": {**plan.output(out), "rows_done": rows}})
    return plan
