"""Reward benchmark: what one Gain-Beyond-RAG scoring pass costs, and what batching and the cache save.

    python benchmarks/rl/reward_bench.py [--runs tiny-random:64 smollm2-135m-instruct:16] [--threads 1]
                                      [--grpo-searcher CHECKPOINT] [--out benchmarks/results/reward.json]

For each `model:n` run, on one TransformersGenerator (so both paths share the same weights):
1. the naive-RAG baseline for n embedded training questions (top-3 BM25), answered in batches;
2. n trajectories (question top-3 plus top-2 for the question's last words, deduplicated)
   scored by `RewardScorer` in one batched call through an empty response cache ("batched");
3. the same trajectories scored one call per sample, uncached ("serial");
4. the batched path again, now answered entirely from the cache ("cache hit").
Reports seconds and trajectories/s per path, serial/batched and batched/cache-hit ratios, and
the generator's prompt and completion tokens/s in the batched path. Rewards must agree across
the three paths (greedy decoding), otherwise the run fails.

With `--grpo-searcher CHECKPOINT`, it also scores one real GRPO batch (16 training questions x 4
samples from that searcher, temperature 0.7) the way training does -- naive-RAG baseline
precomputed through the same response cache, identical contexts answered once -- against one
uncached generator call per trajectory, and reports how many contexts were distinct or equal to
the naive one. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from s3_ray.clients.generator import GeneratorClient
from s3_ray.config import DataConfig, RewardConfig
from s3_ray.data.corpus import read_corpus
from s3_ray.data.embedded import embedded_dir, load_split
from s3_ray.generation import CachedGenerator, ResponseCache, TransformersGenerator
from s3_ray.retrieval import BM25Retriever
from s3_ray.reward import BaselineCache, BaselineSettings, RewardScorer, precompute_baseline
from s3_ray.types import Passage, Trajectory


def parse_run(spec: str) -> tuple[str, int]:
    """`model:n` -> (model, n).

    >>> parse_run("tiny-random:64")
    ('tiny-random', 64)
    """
    model, sep, n = spec.rpartition(":")
    if not sep or not model or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"--runs entry {spec!r} is not of the form MODEL:N with N >= 1")
    return model, int(n)


def make_trajectories(retriever: BM25Retriever, n: int) -> list[Trajectory]:
    items = load_split(DataConfig(), "train")[:n]
    if len(items) < n:
        raise ValueError(f"only {len(items)} embedded training questions, {n} asked for")
    first = retriever.search([it.question for it in items], 3)
    second = retriever.search([" ".join(it.question.split()[-4:]) for it in items], 2)
    trajs = []
    for it, a, b in zip(items, first, second):
        ctx: dict[str, Passage] = {h.passage.id: h.passage for h in [*a, *b]}
        trajs.append(Trajectory(item=it, prompt_ids=[0], context=list(ctx.values())))
    return trajs


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def run_one(model: str, n: int, threads: int, retriever: BM25Retriever, workdir: Path) -> dict[str, Any]:
    gen = TransformersGenerator(model, num_threads=threads)
    gen.generate([[{"role": "user", "content": "warm up"}]])
    trajs = make_trajectories(retriever, n)
    settings = BaselineSettings(generator=gen.model_id, init_k=3, retriever="bm25-embedded",
                                backend="transformers", decoding=str(gen.decoding))
    baseline = BaselineCache(workdir / f"{model}-baseline.jsonl", settings)
    t0 = time.perf_counter()
    precompute_baseline([t.item for t in trajs], retriever, GeneratorClient.in_process(gen), 3, baseline,
                        batch_size=16, progress=False)
    baseline_s = time.perf_counter() - t0

    cached = GeneratorClient.in_process(CachedGenerator(gen, ResponseCache(workdir / f"{model}-cache.sqlite")))
    plain = GeneratorClient.in_process(gen)
    cfg = RewardConfig()

    before = gen.stats()
    t0 = time.perf_counter()
    batched = RewardScorer(cached, baseline, cfg).score([Trajectory(t.item, t.prompt_ids, context=t.context)
                                                         for t in trajs])
    batched_s = time.perf_counter() - t0
    after = gen.stats()

    serial_scorer = RewardScorer(plain, baseline, cfg)
    t0 = time.perf_counter()
    serial = [serial_scorer.score([Trajectory(t.item, t.prompt_ids, context=t.context)])[0] for t in trajs]
    serial_s = time.perf_counter() - t0

    calls_before = gen.stats()["calls"]
    t0 = time.perf_counter()
    hit = RewardScorer(cached, baseline, cfg).score([Trajectory(t.item, t.prompt_ids, context=t.context)
                                                     for t in trajs])
    hit_s = time.perf_counter() - t0
    if gen.stats()["calls"] != calls_before:
        raise RuntimeError("the cache-hit pass reached the generator")
    if not (batched == serial == hit):
        raise RuntimeError(f"rewards differ between paths: batched={batched} serial={serial} cache={hit}")

    gen_s = delta(after, before, "seconds")
    return {
        "model": model, "trajectories": n, "threads": threads, "batch_size": gen.batch_size,
        "baseline_s": baseline_s,
        "batched_s": batched_s, "serial_s": serial_s, "cache_hit_s": hit_s,
        "batched_traj_per_s": n / batched_s, "serial_traj_per_s": n / serial_s, "cache_hit_traj_per_s": n / hit_s,
        "serial_over_batched": serial_s / batched_s, "batched_over_cache_hit": batched_s / hit_s,
        "prompt_tokens_per_s": delta(after, before, "prompt_tokens") / gen_s,
        "completion_tokens_per_s": delta(after, before, "completion_tokens") / gen_s,
        "mean_prompt_tokens": delta(after, before, "prompt_tokens") / n,
        "mean_reward": sum(r.reward for r in batched) / n,
        "baseline_genacc": baseline.accuracy(),
    }


def grpo_run(searcher: str, generator: str, questions: int, group: int, threads: int,
             retriever: BM25Retriever, workdir: Path) -> dict[str, Any]:
    """The reward of one real GRPO batch: `questions` x `group` trajectories sampled from a searcher
    checkpoint (temperature 0.7, demo budgets). As in training, the naive-RAG baseline was
    precomputed through the same cached generator, so a trajectory whose context equals the naive
    context, or another trajectory's, costs no generation. Compared with one uncached generator
    call per trajectory, on the same weights; rewards must agree."""
    from s3_ray.agent.policy import HFPolicy
    from s3_ray.agent.rollout import run_rollout
    from s3_ray.clients.retriever import RetrieverClient
    from s3_ray.config import RolloutConfig, SearcherConfig
    from s3_ray.models import load_causal_lm

    items = load_split(DataConfig(), "train")[:questions]
    model, tok = load_causal_lm(searcher, num_threads=threads)
    scfg = SearcherConfig(model=searcher, max_new_tokens=40, temperature=0.7, max_prompt_tokens=1024)
    t0 = time.perf_counter()
    trajs = run_rollout([it for it in items for _ in range(group)], HFPolicy(model, tok, scfg), tok,
                        RetrieverClient.in_process(retriever), RolloutConfig(), scfg)
    rollout_s = time.perf_counter() - t0
    del model

    gen = TransformersGenerator(generator, num_threads=threads)
    cached_gen = CachedGenerator(gen, ResponseCache(workdir / "grpo-cache.sqlite"))
    cached = GeneratorClient.in_process(cached_gen)
    settings = BaselineSettings(generator=gen.model_id, init_k=3, retriever="bm25-embedded",
                                backend="transformers", decoding=str(gen.decoding))
    baseline = BaselineCache(workdir / "grpo-baseline.jsonl", settings)
    precompute_baseline(items, retriever, cached, 3, baseline, batch_size=16, progress=False)
    hits_before, misses_before = cached_gen.hits, cached_gen.misses

    def fresh() -> list[Trajectory]:
        return [Trajectory(t.item, t.prompt_ids, context=t.context) for t in trajs]

    t0 = time.perf_counter()
    batched = RewardScorer(cached, baseline, RewardConfig()).score(fresh())
    batched_s = time.perf_counter() - t0
    serial_scorer = RewardScorer(GeneratorClient.in_process(gen), baseline, RewardConfig())
    t0 = time.perf_counter()
    serial = [serial_scorer.score([t])[0] for t in fresh()]
    serial_s = time.perf_counter() - t0
    if batched != serial:
        raise RuntimeError(f"rewards differ between paths: batched={batched} serial={serial}")
    naive = {it.id: [h.passage.id for h in hits] for it, hits in zip(items, retriever.search([it.question for it in items], 3))}
    contexts = [tuple(p.id for p in t.context) for t in trajs]
    hits, misses = cached_gen.hits - hits_before, cached_gen.misses - misses_before
    return {
        "searcher": searcher, "generator": generator, "questions": questions, "group": group,
        "trajectories": len(trajs), "rollout_s": rollout_s, "batched_s": batched_s, "serial_s": serial_s,
        "serial_over_batched": serial_s / batched_s,
        "unique_contexts": len(set(zip((t.item.id for t in trajs), contexts))),
        "contexts_equal_to_naive": sum(1 for t, c in zip(trajs, contexts) if list(c) == naive[t.item.id]),
        "cache_hits": hits, "cache_misses": misses, "searches_mean": sum(t.num_searches for t in trajs) / len(trajs),
        "mean_reward": sum(r.reward for r in batched) / len(batched),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | n | batched s | serial s | cache-hit s | serial/batched | batched/cache-hit "
            "| prompt tok/s | completion tok/s | mean prompt tok |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['trajectories']} | {r['batched_s']:.2f} | {r['serial_s']:.2f} "
                     f"| {r['cache_hit_s']:.3f} | {r['serial_over_batched']:.2f}x | {r['batched_over_cache_hit']:.0f}x "
                     f"| {r['prompt_tokens_per_s']:.0f} | {r['completion_tokens_per_s']:.1f} "
                     f"| {r['mean_prompt_tokens']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", type=parse_run, default=[("tiny-random", 64), ("smollm2-135m-instruct", 16)])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the generator")
    ap.add_argument("--out", default="benchmarks/results/reward.json")
    ap.add_argument("--grpo-searcher", help="searcher checkpoint: also time the reward of one real GRPO batch")
    ap.add_argument("--grpo-generator", default="smollm2-135m-instruct")
    ap.add_argument("--grpo-questions", type=int, default=16)
    ap.add_argument("--grpo-group", type=int, default=4)
    args = ap.parse_args()

    retriever = BM25Retriever.build(read_corpus(embedded_dir() / "corpus.jsonl"))
    load_start = os.getloadavg()[0]  # other processes on the machine skew every timing
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, n in args.runs:
            rows.append(run_one(model, n, args.threads, retriever, Path(tmp)))
            print(f"{model}: done in {rows[-1]['baseline_s'] + rows[-1]['batched_s'] + rows[-1]['serial_s']:.1f} s",
                  flush=True)
        grpo = None
        if args.grpo_searcher:
            grpo = grpo_run(args.grpo_searcher, args.grpo_generator, args.grpo_questions, args.grpo_group,
                            args.threads, retriever, Path(tmp))
    print(table(rows))
    if grpo:
        print(f"\nGRPO batch ({grpo['trajectories']} trajectories = {grpo['questions']} questions x {grpo['group']}): "
              f"batched+cached {grpo['batched_s']:.2f} s vs serial {grpo['serial_s']:.2f} s = "
              f"{grpo['serial_over_batched']:.1f}x; {grpo['unique_contexts']} distinct contexts, "
              f"{grpo['contexts_equal_to_naive']} equal to naive RAG's; cache {grpo['cache_hits']} hits / "
              f"{grpo['cache_misses']} misses")
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine(),
                           "load_avg_1m_start": load_start, "load_avg_1m_end": os.getloadavg()[0]},
               "runs": rows, "grpo_batch": grpo}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
