"""How often does a searcher's sampling find something Gain Beyond RAG rewards? (RL's raw signal)

    python benchmarks/rl/exploration_probe.py CHECKPOINT [--questions 16] [--group 8] [--temperature 1.0]
        [--warmup-steps N --follow F]

With `--warmup-steps N` the checkpoint first gets N steps of the format warm-up in-process
(`s3_ray.rl.loop.warmup`), with a share `--follow` of its search demonstrations querying a name read in
the initial documents. `--warmup-pool others` (default) warms up on training questions other than
the probed ones; `--warmup-pool train` warms up on the questions the filter keeps from the first
`--train-limit` training questions, the probed ones among them (RL's own questions);
`--warmup-pool dropped` on the ones it drops there (naive RAG already answers them).

Samples `group` episodes per question from a searcher checkpoint for the first `questions`
embedded training questions that naive RAG gets wrong (s3's filter), scores them with the frozen
generator (SmolLM2, in-process, cached) against the naive-RAG baseline, and reports what GRPO
would see: trajectories with a positive / negative reward, groups whose rewards differ (the only
ones that produce a gradient), and trajectories whose context holds the bridge question's second
supporting passage (the document the answer needs). The same episodes are scored under each
`reward.metric` (genacc, answer_logprob, mixed with `--logprob-weight`), so the groups with signal
per metric compare like with like. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # load_guard, shared by all groups

import load_guard  # noqa: E402  (sibling module)


def warm_up(model: Any, tok: Any, retriever: Any, pool: list[Any], args: Any) -> list[float]:
    """`args.warmup_steps` supervised steps of the format warm-up on `pool`, in place."""
    import random

    import torch

    from s3_ray.config import RolloutConfig
    from s3_ray.rl.loop.warmup import warmup_step

    rng, budget = random.Random(args.seed), RolloutConfig()
    model.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.warmup_lr)
    losses = []
    for _ in range(args.warmup_steps):
        batch = rng.sample(pool, args.warmup_batch)
        losses.append(warmup_step(model, tok, retriever, batch, budget, rng, opt, follow_fraction=args.follow,
                                  follow_docs=args.follow_docs))
    model.eval()
    model.requires_grad_(False)
    return losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/exploration_probe.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="searcher checkpoint (HF folder) or registered model name")
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--warmup-batch", type=int, default=4)
    p.add_argument("--warmup-lr", type=float, default=1e-4)
    p.add_argument("--follow", type=float, default=0.0, help="train.warmup_follow_fraction of the warm-up")
    p.add_argument("--follow-docs", type=int, default=None, help="train.warmup_follow_docs of the warm-up")
    p.add_argument("--warmup-pool", choices=["others", "train", "dropped"], default="others",
                   help="warm up on questions other than the probed ones, on the filtered training set, "
                        "or on the questions the filter drops")
    p.add_argument("--train-limit", type=int, default=200, help="data.train_limit of --warmup-pool train/dropped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logprob-weight", type=float, default=0.1, help="reward.logprob_weight of the mixed metric")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "exploration.json"))
    load_guard.add_argument(p)
    args = p.parse_args(argv)
    machine = load_guard.start(args.allow_busy)

    from s3_ray.agent.policy import HFPolicy
    from s3_ray.agent.rollout import rollout_stats, run_rollout
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.clients.retriever import RetrieverClient
    from s3_ray.config import DataConfig, RewardConfig, RolloutConfig, SearcherConfig
    from s3_ray.data.corpus import read_corpus
    from s3_ray.data.embedded import embedded_dir, load_split
    from s3_ray.generation import CachedGenerator, ResponseCache, TransformersGenerator
    from s3_ray.models import load_causal_lm
    from s3_ray.retrieval import BM25Retriever
    from s3_ray.reward import BaselineCache, BaselineSettings, RewardScorer, precompute_baseline
    from s3_ray.reward.training_filter import filter_unanswered

    t0 = time.perf_counter()
    retriever = BM25Retriever.build(read_corpus(embedded_dir() / "corpus.jsonl"))
    gen = TransformersGenerator("smollm2-135m-instruct", num_threads=args.threads, max_new_tokens=32)
    with tempfile.TemporaryDirectory() as tmp:
        cached = GeneratorClient.in_process(CachedGenerator(gen, ResponseCache(Path(tmp) / "cache.sqlite")))
        baseline = BaselineCache(Path(tmp) / "baseline.jsonl",
                                 BaselineSettings(generator=gen.model_id, init_k=3, retriever="bm25-embedded",
                                                  backend="transformers", decoding=str(gen.decoding)))
        limit = 4 * args.questions if args.warmup_pool == "others" else args.train_limit
        pool = load_split(DataConfig(train_limit=limit), "train")
        precompute_baseline(pool, retriever, cached, 3, baseline, batch_size=16, progress=False)
        kept = filter_unanswered(pool, baseline)[0]
        items = kept[:args.questions]  # a prefix of the split either way: the same questions
        model, tok = load_causal_lm(args.checkpoint, num_threads=args.threads)
        if args.warmup_steps:
            if args.warmup_pool == "train":
                warm_pool = kept
            elif args.warmup_pool == "dropped":
                warm_pool = [it for it in pool if it.id not in {k.id for k in kept}]
            else:
                warm_pool = [it for it in load_split(DataConfig(), "train") if it.id not in {i.id for i in items}]
            warm_losses = warm_up(model, tok, retriever, warm_pool, args)
        scfg = SearcherConfig(model=args.checkpoint, max_new_tokens=40, temperature=args.temperature,
                              max_prompt_tokens=1024)
        batch = [it for it in items for _ in range(args.group)]
        trajs = run_rollout(batch, HFPolicy(model, tok, scfg), tok, RetrieverClient.in_process(retriever),
                            RolloutConfig(), scfg)
        scored = RewardScorer(cached, baseline, RewardConfig(metric="mixed", logprob_weight=args.logprob_weight)
                              ).score(trajs)
    rewards = [r.metrics["gbr"] for r in scored]  # reward.metric=genacc
    per_metric = {"genacc": rewards, "answer_logprob": [r.metrics["logprob_gain"] for r in scored],
                  "mixed": [r.reward for r in scored]}
    signal: dict[str, int] = {}
    for metric, values in per_metric.items():
        by_q: dict[str, list[float]] = {}
        for t, v in zip(trajs, values):
            by_q.setdefault(t.item.id, []).append(v)
        signal[metric] = sum(1 for g in by_q.values() if max(g) > min(g))
    groups: dict[str, list[float]] = {}
    for t, r in zip(trajs, rewards):
        groups.setdefault(t.item.id, []).append(r)
    second = [t for t in trajs if t.item.meta.get("type") == "bridge" and len(t.item.meta.get("support", [])) > 1]
    with_hop = [r.metrics["logprob_gain"] for t, r in zip(trajs, scored) if t in second
                and t.item.meta["support"][1] in {p.id for p in t.context}]
    without_hop = [r.metrics["logprob_gain"] for t, r in zip(trajs, scored) if t in second
                   and t.item.meta["support"][1] not in {p.id for p in t.context}]
    bridge = [t for t in trajs if t.item.meta.get("type") == "bridge" and len(t.item.meta.get("support", [])) > 1]
    found = sum(1 for t in bridge if t.item.meta["support"][1] in {p.id for p in t.context})
    queries = [turn.query for t in trajs for turn in t.turns if turn.query]
    report: dict[str, Any] = {
        "checkpoint": args.checkpoint, "warmup_steps": args.warmup_steps, "follow": args.follow,
        "warmup_pool": args.warmup_pool, "probed_ids": [it.id for it in items],
        "warmup_final_loss": warm_losses[-1] if args.warmup_steps else None, "questions": len(items), "group": args.group,
        "temperature": args.temperature, "trajectories": len(trajs),
        "positive": sum(1 for r in rewards if r > 0), "negative": sum(1 for r in rewards if r < 0),
        "groups_with_signal": sum(1 for g in groups.values() if max(g) > min(g)), "groups": len(groups),
        "groups_with_signal_by_metric": signal, "logprob_weight": args.logprob_weight,
        "logprob_gain_mean_second_hop_found": sum(with_hop) / len(with_hop) if with_hop else None,
        "logprob_gain_mean_second_hop_missed": sum(without_hop) / len(without_hop) if without_hop else None,
        "bridge_trajectories": len(bridge), "bridge_second_hop_in_context": found,
        "distinct_queries": len(set(queries)), "example_queries": sorted(set(queries))[:8],
        **{k: v for k, v in rollout_stats(trajs).items() if k in ("searches_mean", "malformed_rate")},
        "seconds": round(time.perf_counter() - t0, 1), "machine": load_guard.finish(machine),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("| trajectories | reward > 0 | reward < 0 | groups with signal | bridge 2nd hop found | searches | malformed |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {report['trajectories']} | {report['positive']} | {report['negative']} | "
          f"{report['groups_with_signal']} of {report['groups']} | {found} of {len(bridge)} | "
          f"{report['searches_mean']:.2f} | {100 * report['malformed_rate']:.0f}% |")
    print("groups with signal by reward.metric: " + ", ".join(f"{k} {v} of {len(groups)}" for k, v in signal.items()))
    print(f"example queries: {report['example_queries']}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
