"""Evaluate context methods (naive RAG, baselines, searchers) with the frozen generator.

    python -m jobs.evaluate --config jobs/configs/demo.yaml [--searcher LABEL=CHECKPOINT ...] [--dry-run]
                            [--in-driver] [--task-cpus 0.5] [--task-gpus N] [--verbose] [key=value ...]

Methods come from `eval.methods` (`s3_ray.eval.methods.METHODS`: naive_rag, no_retrieval, s3 = the
untrained `searcher.model`, cot, rewrite, ircot, search_r1, search_o1) plus one s3 method per
`--searcher` / `eval.checkpoints` entry. Searchers and baselines decode greedily. With
`reward.use_judge`, GenAcc is span match OR the generator-as-judge (as in the reward).

Every (method, data set) pair runs as its own Ray task (`--task-cpus` logical CPUs each, and
`--task-gpus` / `eval.task_gpus` GPUs where the method loads a searcher or LM baseline; the task
builds its method and calls the retriever and generator Serve apps through picklable clients);
`--in-driver` runs the pairs one after the other in this process instead.

Data: with `eval.datasets` empty, the `eval.split` of `data` (the embedded set by default), results
in <run_dir>/eval/<split>/. Otherwise every listed set (FlashRAG JSONL, s3 parquet, MIRAGE JSON,
or by name from the hub), sampled to `eval.limit`, results in <run_dir>/eval/<dataset>/<method>.jsonl
and a per-data-set + average report in <run_dir>/eval/report/. An interrupted run resumes where
it stopped. `--dry-run` resolves and prints the whole plan (config, data sets, methods, paths)
without starting Ray or loading models; it lists missing inputs and exits 2 on contradictions.
A real run checks the same inputs first (data files parsed, checkpoints present) and stops
before Ray starts when one is wrong. The console shows one bar per method; Ray's, Serve's and
the tasks' own output goes to `<run_dir>/logs/`.
"""

from __future__ import annotations

import argparse

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.console import JobConsole, shown_path
from s3_ray.eval.ray_pairs import DEFAULT_TASK_CPUS, ray_map
from s3_ray.eval.suite import evaluate, evaluate_datasets
from s3_ray.plans.evaluate import evaluate_plan
from s3_ray.resources import gpus_or_auto


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--searcher", action="append", default=[], metavar="LABEL=CHECKPOINT",
                        help="evaluate a searcher checkpoint under this label (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    parser.add_argument("--in-driver", action="store_true",
                        help="run the (method, data set) pairs one after the other in this process, not as Ray tasks")
    parser.add_argument("--task-cpus", type=float, default=DEFAULT_TASK_CPUS,
                        help=f"logical CPUs per (method, data set) Ray task (default {DEFAULT_TASK_CPUS})")
    parser.add_argument("--task-gpus", type=float, default=None,
                        help="GPUs per Ray task whose method loads a searcher or LM baseline (default: eval.task_gpus; "
                             "unset: 1 when this process sees CUDA, else 0)")
    runtime.add_verbose_flag(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. eval.split=dev")
    args = parser.parse_args(argv)
    searchers = {}
    for spec in args.searcher:
        if "=" not in spec:
            parser.error(f"--searcher {spec!r}: expected LABEL=CHECKPOINT")
        label, path = spec.split("=", 1)
        searchers[label] = path
    if args.task_cpus <= 0:
        parser.error(f"--task-cpus must be > 0, got {args.task_cpus}")
    if args.task_gpus is not None and args.task_gpus < 0:
        parser.error(f"--task-gpus must be >= 0, got {args.task_gpus}")
    job = JobConsole("evaluate", verbose=args.verbose)
    return job.run(lambda: _run(job, args, searchers))


def _run(job: JobConsole, args: argparse.Namespace, searchers: dict[str, str]) -> int:
    cfg = load_job_config(args.config, args.overrides)
    plan = evaluate_plan(cfg, searchers)
    if args.dry_run:
        return plan.emit()
    plan.require()  # data sets parsed, checkpoints and the index present, before Ray starts
    with job.logging_to(cfg.run_dir) as console:
        runtime.init_ray()
        runtime.deploy_services(cfg)
        retriever, generator = runtime.clients(cfg)
        gpus = gpus_or_auto(args.task_gpus if args.task_gpus is not None else cfg.eval.task_gpus)
        map_fn = None if args.in_driver else ray_map(args.task_cpus, log=runtime.log, num_gpus=gpus)
        if cfg.eval.datasets:
            _, md = evaluate_datasets(cfg, retriever, generator, searchers, map_fn=map_fn, log=runtime.log)
        else:
            _, md = evaluate(cfg, retriever, generator, searchers, map_fn=map_fn, log=runtime.log)
        console.result(md.read_text())
        console.info(f"report: {shown_path(md.parent, folder=True)}")
        job.finished()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
