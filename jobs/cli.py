"""`s3-ray`: one command for every job (each subcommand is also `python -m jobs.<name>`).

    s3-ray demo                 index -> serve -> precompute -> train -> evaluate on the embedded default
    s3-ray index                build the retrieval index for a corpus
    s3-ray serve                start the retriever and generator Serve apps
    s3-ray precompute           naive-RAG baseline answers for a split (the reward's baseline)
    s3-ray train                RL-train the searcher on Ray Train
    s3-ray evaluate             compare context methods with the frozen generator
    s3-ray infer                write a searcher's (or naive RAG's) contexts for a split as JSONL
    s3-ray sweep                Ray Tune sweep over search budgets or training settings (ASHA), resumable

Every subcommand takes `--config PATH`, dotted `key=value` overrides, `--dry-run` (print the
resolved plan: resources, models, data and output paths; starts nothing) and `--verbose`. The
console shows our own lines: stages with their seconds, progress bars, one line per RL step,
results. Ray's, Serve's, Train's and the models' output goes to `<run_dir>/logs/` (`--verbose` or
S3RAY_VERBOSE=1 prints it here too). Inputs are checked before Ray starts; known errors print as
`error: <message>` and exit with status 2. `s3-ray <subcommand> --help` shows each one's options.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "demo": "jobs.demo",
    "index": "jobs.build_index",
    "serve": "jobs.serve",
    "precompute": "jobs.precompute",
    "train": "jobs.train",
    "evaluate": "jobs.evaluate",
    "infer": "jobs.infer",
    "sweep": "jobs.sweep",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"s3-ray: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(SUBCOMMANDS[name]).main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
