"""Does the gold answer's log-likelihood point where GenAcc points? (the dense reward's premise)

    python benchmarks/rl/answer_logprob_bench.py [--questions 40] [--allow-busy]

For the first `--questions` bridge questions of the embedded test split, the frozen generator
(SmolLM2, in-process, s3's answer prompt) scores the gold answer (mean token log-likelihood,
best alias) with three contexts: naive top-3 BM25, the question's two supporting passages, and
naive top-3 plus one random passage. A dense reward is useful when the supporting passages
raise it (nearly always) and an irrelevant passage does not (about half the time, mean near 0).
Also reports GenAcc on the first two contexts and the seconds per scored context. Prints a table
and writes benchmarks/results/answer_logprob.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # load_guard, shared by all groups

import load_guard  # noqa: E402  (sibling module)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/answer_logprob_bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "answer_logprob.json"))
    load_guard.add_argument(p)
    args = p.parse_args(argv)
    machine = load_guard.start(args.allow_busy)

    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.config import DataConfig
    from s3_ray.data.corpus import read_corpus
    from s3_ray.data.embedded import embedded_dir, load_split
    from s3_ray.generation import TransformersGenerator
    from s3_ray.retrieval import BM25Retriever
    from s3_ray.reward.judge import batch_genacc

    corpus = read_corpus(embedded_dir() / "corpus.jsonl")
    by_id = {p.id: p for p in corpus}
    retriever = BM25Retriever.build(corpus)
    items = [it for it in load_split(DataConfig(), "test") if it.meta.get("type") == "bridge"
             and len(it.meta.get("support", [])) >= 2][: args.questions]
    rng = random.Random(args.seed)
    naive = [[h.passage for h in row] for row in retriever.search([it.question for it in items], 3)]
    support = [[by_id[s] for s in it.meta["support"][:2]] for it in items]
    noisy = []
    for ctx in naive:
        ids = {p.id for p in ctx}
        extra = rng.choice([p for p in corpus if p.id not in ids])
        noisy.append([*ctx, extra])
    client = GeneratorClient.in_process(TransformersGenerator("smollm2-135m-instruct", num_threads=args.threads,
                                                              max_new_tokens=32))
    qs, golds = [it.question for it in items], [list(it.golden_answers) for it in items]
    t0 = time.perf_counter()
    ll = {name: client.answer_logprobs(qs, ctxs, golds)
          for name, ctxs in (("naive", naive), ("support", support), ("naive_plus_random", noisy))}
    score_s = (time.perf_counter() - t0) / (3 * len(items))
    acc = {name: batch_genacc(client.answer(qs, ctxs), golds) for name, ctxs in (("naive", naive),
                                                                                  ("support", support))}

    def versus(name: str) -> dict[str, float]:
        gains = [a - b for a, b in zip(ll[name], ll["naive"])]
        return {"raised": sum(1 for g in gains if g > 0), "of": len(gains), "mean_gain": statistics.mean(gains)}

    report = {"questions": len(items), "generator": "smollm2-135m-instruct",
              "support_vs_naive": versus("support"), "random_added_vs_naive": versus("naive_plus_random"),
              "genacc": {k: statistics.mean(v) for k, v in acc.items()},
              "mean_logprob": {k: statistics.mean(v) for k, v in ll.items()},
              "seconds_per_scored_context": score_s, "threads": args.threads, "machine": load_guard.finish(machine)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    s, r = report["support_vs_naive"], report["random_added_vs_naive"]
    print("| context vs naive top-3 | gold log-likelihood raised | mean gain (nats/token) |")
    print("|---|---|---|")
    print(f"| the two supporting passages | {s['raised']} of {s['of']} | {s['mean_gain']:+.2f} |")
    print(f"| naive top-3 + a random passage | {r['raised']} of {r['of']} | {r['mean_gain']:+.2f} |")
    print(f"GenAcc naive {100 * report['genacc']['naive']:.1f}, supporting {100 * report['genacc']['support']:.1f}; "
          f"{score_s:.2f} s per scored context; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
