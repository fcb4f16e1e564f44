"""Start the retriever and generator Serve apps and keep them up (Ctrl-C stops them).

    python -m jobs.serve [--config jobs/configs/demo.yaml] [--no-generator] [--dry-run] [key=value ...]

The retriever answers `POST http://<serve.host>:<serve.port>/retrieve` (Search-R1/s3 schema), the
generator `POST .../generator/answer`, and with `--copilot [CHECKPOINT]` a searcher answers
`POST .../copilot/search`. Build the index first (`python -m jobs.build_index`).
A retriever or generator app that already runs is kept when it serves this config; otherwise the
job stops with an error naming each differing key (stop the old one with `serve shutdown`).
For a cluster, `serve deploy deployments/serve_config.yaml` does the same declaratively.
"""

from __future__ import annotations

import argparse
import time

from jobs import runtime
from s3_ray.config import load_job_config
from s3_ray.plans.serve import serve_plan


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
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. serve.port=8001")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    if args.dry_run:
        return serve_plan(cfg, not args.no_generator, args.copilot).emit()
    runtime.init_ray()
    runtime.deploy_services(cfg, with_generator=not args.no_generator)
    if args.copilot is not None:
        from ray import serve

        from deployments.copilot import CopilotAppArgs, build_app

        app_args = CopilotAppArgs.from_config(cfg, model=args.copilot or None)
        serve.run(build_app(app_args), name="copilot", route_prefix="/copilot")
        runtime.log(f"copilot: POST http://{cfg.serve.host}:{cfg.serve.port}/copilot/search ({app_args.model_name()})")
    runtime.log(f"serving on http://{cfg.serve.host}:{cfg.serve.port} (retrieve: POST /retrieve)")
    if args.once:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
