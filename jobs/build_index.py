"""Build the retrieval index: `python -m jobs.build_index [--config C] [--corpus PATH] [key=value ...]`."""

from __future__ import annotations

import argparse

from s3_ray.config import load_config
from s3_ray.data.embedded import resolve_paths
from s3_ray.retrieval.index import build_index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.build_index", description=__doc__)
    ap.add_argument("--config", default=None, help="YAML config (defaults when omitted)")
    ap.add_argument("--corpus", default=None, help="corpus JSONL (default: data.corpus_path, else the embedded one)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. retrieval.index_dir=runs/idx")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    corpus = args.corpus or resolve_paths(cfg.data).corpus
    manifest = build_index(corpus, cfg.retrieval, progress=not args.quiet)
    print(f"{cfg.retrieval.index_dir}: {manifest.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
