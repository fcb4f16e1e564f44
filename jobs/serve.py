"""Start the retriever and generator Serve apps and keep them up until Ctrl-C or SIGTERM.

    python -m jobs.serve [--config jobs/configs/demo.yaml] [--no-generator] [--copilot [CHECKPOINT]]
                         [--once] [--dry-run] [--verbose] [key=value ...]

The retriever answers `POST http://<serve.host>:<serve.port>/retrieve` (Search-R1/s3 schema), the
generator `POST .../generator/answer`, and with `--copilot [CHECKPOINT]` a searcher answers
`POST .../copilot/search`. Build the index first (`python -m jobs.build_index`).
A retriever or generator app that already runs is kept when it serves this config; otherwise the
job stops with an error naming each differing key (stop the old one with `serve shutdown`).
Stopped with Ctrl-C or SIGTERM (a process manager, `ray job stop`), it deletes the apps it started
and says so in one line. Serve's own logs (one file per replica, requests included) go to
`<run_dir>/logs/serve/`. For a cluster, `serve deploy deployments/serve_config.yaml` does the
same declaratively.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.console import JobConsole
from s3_ray.console.errors import Terminated
from s3_ray.plans.serve import serve_plan, whole_machine

COPILOT_APP = "copilot"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=runtime.DEFAULT_CONFIG, help="YAML config file")
    parser.add_argument("--no-generator", action="store_true", help="start only the retriever")
    parser.add_argument("--copilot", metavar="CHECKPOINT", nargs="?", const="",
                        help="also serve a searcher at /copilot/search (default model: searcher.model)")
    parser.add_argument("--once", action="store_true", help="deploy and return instead of blocking")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (JSON) and exit; loads no model, starts no Ray")
    runtime.add_verbose_flag(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. serve.port=8001")
    args = parser.parse_args(argv)
    job = JobConsole("serve", verbose=args.verbose)
    return job.run(lambda: _run(job, args))


def _run(job: JobConsole, args: argparse.Namespace) -> int:
    cfg = load_job_config(args.config, args.overrides)
    local = not os.environ.get("RAY_ADDRESS")
    if local:  # this job's Ray is this machine: an unset retriever_cpus takes the free cores
        cfg = whole_machine(cfg, not args.no_generator, args.copilot)
    plan = serve_plan(cfg, not args.no_generator, args.copilot)
    if args.dry_run:
        return plan.emit()
    plan.require()  # the index and the models, before Ray starts
    with job.logging_to(cfg.run_dir) as console:
        # no dashboard for a local serve: Serve does not need it (see docs/operations.md)
        runtime.init_ray(dashboard=False)
        started = runtime.deploy_services(cfg, with_generator=not args.no_generator)
        if args.copilot is not None:
            from ray import serve

            from deployments.copilot import CopilotAppArgs, build_app

            app_args = CopilotAppArgs.from_config(cfg, model=args.copilot or None)
            serve.run(build_app(app_args), name=COPILOT_APP, route_prefix="/copilot",
                      logging_config=runtime.serve_logging(cfg))
            started.append(COPILOT_APP)
            console.info(f"copilot: POST http://{cfg.serve.host}:{cfg.serve.port}/copilot/search "
                         f"({app_args.model_name()})")
        console.info(f"serving on http://{cfg.serve.host}:{cfg.serve.port} (retrieve: POST /retrieve); "
                     "Ctrl-C or SIGTERM stops it")
        if args.once:
            return 0
        # Ctrl-C stops it even when started from a shell that ignores SIGINT (`nohup ... &` starts
        # background jobs with SIGINT ignored, and Python keeps an inherited "ignore")
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, Terminated) as stop:
            how = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
            console.info(f"stopped ({how}): {shut_down(started)}")
    return 0


def shut_down(apps: list[str]) -> str:
    """Delete the Serve apps this job started (newest first); what was done, in words."""
    if not apps:
        return "no apps of its own to shut down (the ones it reused keep running)"
    from ray import serve

    for name in reversed(apps):
        serve.delete(name)
    return f"shut down the {', '.join(apps)} app{'s' if len(apps) > 1 else ''}"


if __name__ == "__main__":
    raise SystemExit(main())
