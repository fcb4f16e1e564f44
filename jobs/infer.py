"""Run a context method (a searcher, or naive RAG) over a QA split and write the contexts as JSONL.

    python -m jobs.infer [--config PATH] [--searcher CKPT] [--split test] [--method s3|naive_rag]
                         [--out PATH] [--serve | --retriever-url URL] [--dry-run] [--verbose] [key=value ...]

One row per question: id, question, golden_answers, method, searcher, context (ids + contents:
what a generator should read), searches and the search trace. Searchers decode greedily. Rows are
appended batch by batch, so a rerun skips ids already written (a torn last line from a crash is
dropped and redone). The retriever is in-process by default (reads `retrieval.index_dir`); `--serve`
uses the running `retriever` Serve app (deploying it if needed), `--retriever-url` any Search-R1/s3
style `/retrieve` server. Default output: `<run_dir>/contexts/<split>.<method>.jsonl`; the
models' and Ray's own output goes to `<run_dir>/logs/`.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from jobs import runtime
from s3_ray.config import S3Config, load_job_config
from s3_ray.console import JobConsole, shown_path
from s3_ray.eval.contexts import write_split_contexts
from s3_ray.plans.infer import infer_plan


def build_retriever(cfg: S3Config, serve: bool, url: str | None) -> Any:
    """A `RetrieverClient`: over `url`, over the Serve app (`serve`, deployed if needed), or in-process."""
    from s3_ray.clients.retriever import RetrieverClient

    if url:
        return RetrieverClient.from_url(url, token_env=cfg.serve.auth_token_env)
    if serve:
        runtime.init_ray()
        runtime.deploy_services(cfg, with_generator=False)
        return RetrieverClient.from_app(runtime.RETRIEVER_APP)
    from s3_ray.retrieval.index import load_retriever

    return RetrieverClient.in_process(load_retriever(cfg.retrieval))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    p.add_argument("--searcher", default=None, metavar="CKPT",
                   help="searcher model folder or name (default: searcher.model); only with --method s3")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--method", default="s3", choices=["s3", "naive_rag"])
    p.add_argument("--out", default=None, help="output JSONL (default <run_dir>/contexts/<split>.<method>.jsonl)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--serve", action="store_true", help="use the 'retriever' Serve app")
    src.add_argument("--retriever-url", default=None, help="a Search-R1/s3 style /retrieve URL")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    runtime.add_verbose_flag(p)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rollout.max_turns=3")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.searcher and args.method != "s3":
        raise SystemExit(f"--searcher only applies to --method s3, not {args.method!r}")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    job = JobConsole("infer", verbose=args.verbose)
    return job.run(lambda: _run(job, args))


def _run(job: JobConsole, args: argparse.Namespace) -> int:
    cfg = load_job_config(args.config, args.overrides)
    searcher = (args.searcher or cfg.searcher.model) if args.method == "s3" else None
    out = Path(args.out) if args.out else cfg.path("contexts", f"{args.split}.{args.method}.jsonl")
    plan = infer_plan(cfg, args.split, args.method, searcher, out, args.batch_size, serve=args.serve,
                      retriever_url=args.retriever_url)
    if args.dry_run:
        return plan.emit()
    plan.require()  # the questions, the searcher and the index, before a model loads or Ray starts
    with job.logging_to(cfg.run_dir) as console:
        connect = functools.partial(build_retriever, cfg, args.serve, args.retriever_url)
        written = write_split_contexts(cfg, args.split, args.method, searcher, out, connect,
                                       batch_size=args.batch_size, log=runtime.log)
        console.info(f"wrote {written} rows -> {shown_path(out)}")
        console.result(str(out))
        job.finished()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
