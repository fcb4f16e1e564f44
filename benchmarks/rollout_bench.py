"""Rollout benchmark: what batching episodes and stopping at protocol tags buy, in one run.

    python benchmarks/rollout_bench.py [--model smollm2-135m-instruct] [--questions 8] [--out ...]

On the same model, the same test questions, greedy decoding and an in-process BM25 index over the
embedded corpus, it measures:
1. episodes/s of the batched rollout (`run_rollout` over all questions: one policy call per turn
   for every live episode) vs a per-episode loop (`run_rollout` on one question at a time);
2. tokens per episode with and without tag stops (`HFPolicy(stop_at_tags=False)`): tokens the
   model decoded (what costs time) and tokens kept in the trajectory (what the protocol needs),
   and the decode steps each variant ran;
3. both rollouts again without keeping the KV cache between turns (`HFPolicy(reuse_cache=False)`:
   every turn re-reads the whole episode), and the prompt positions each variant fed the model.
Prints a table and writes everything to JSON.
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

from s3_ray.agent.policy import HFPolicy
from s3_ray.agent.rollout import rollout_stats, run_rollout
from s3_ray.clients.retriever import RetrieverClient
from s3_ray.config import RetrievalConfig, RolloutConfig, SearcherConfig
from s3_ray.data.embedded import embedded_dir
from s3_ray.data.qa import read_qa
from s3_ray.models import load_causal_lm
from s3_ray.retrieval import build_index, load_retriever
from s3_ray.types import QAItem


class DecodeCounter:
    """Wraps `model.generate` to count decode steps and decoded (non-pad) tokens per call."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.inner = model.generate
        self.steps = 0
        self.tokens = 0
        model.generate = self  # instance attribute: only this model object is affected

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        new = out.sequences[:, kwargs["input_ids"].shape[1]:]
        self.steps += int(new.shape[1])
        self.tokens += int((new != self.pad_id).sum())
        return out

    def reset(self) -> None:
        self.steps = self.tokens = 0

    def restore(self) -> None:
        self.model.generate = self.inner


def timed_rollout(groups: list[list[QAItem]], policy: HFPolicy, tok: Any, retriever: Any, budget: RolloutConfig,
                  scfg: SearcherConfig, counter: DecodeCounter) -> dict[str, Any]:
    """Run each group as one rollout; returns throughput and token counts over all episodes."""
    counter.reset()
    calls_before, fed_before = policy.stats.calls, policy.prefill_tokens
    trajs, start = [], time.perf_counter()
    for group in groups:
        trajs.extend(run_rollout(group, policy, tok, retriever, budget, scfg))
    seconds = time.perf_counter() - start
    n = len(trajs)
    stats = rollout_stats(trajs)
    return {
        "episodes": n,
        "seconds": seconds,
        "episodes_per_s": n / seconds,
        "policy_calls": policy.stats.calls - calls_before,
        "prefill_positions": policy.prefill_tokens - fed_before,
        "decode_steps": counter.steps,
        "decoded_tokens_per_episode": counter.tokens / n,
        "kept_tokens_per_episode": sum(sum(t.loss_mask) for t in trajs) / n,
        "searches_mean": stats.get("searches_mean", 0.0),
        "turns_mean": stats.get("turns_mean", 0.0),
        "malformed_rate": stats.get("malformed_rate", 0.0),
        "contexts": [[p.id for p in t.context] for t in trajs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="searcher model (name or folder)")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "rollout.json"))
    args = p.parse_args(argv)
    if args.questions < 1:
        p.error("--questions must be >= 1")

    items = read_qa(embedded_dir() / "test.jsonl")[: args.questions]
    with tempfile.TemporaryDirectory() as tmp:
        rcfg = RetrievalConfig(index_dir=str(Path(tmp) / "index"))
        build_index(embedded_dir() / "corpus.jsonl", rcfg, progress=False)
        retriever = RetrieverClient.in_process(load_retriever(rcfg))
        model, tok = load_causal_lm(args.model, num_threads=args.threads)
        scfg = SearcherConfig(model=args.model, max_new_tokens=args.max_new_tokens, temperature=0.0,
                              num_threads=args.threads)
        budget = RolloutConfig(init_k=3, top_k=3, keep_per_turn=2, max_turns=args.max_turns)
        counter = DecodeCounter(model, tok.pad_token_id)
        stopping, no_stop = HFPolicy(model, tok, scfg), HFPolicy(model, tok, scfg, stop_at_tags=False)
        no_reuse = HFPolicy(model, tok, scfg, reuse_cache=False)
        run_rollout(items[:1], stopping, tok, retriever, budget, scfg)  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        batched = timed_rollout([items], stopping, tok, retriever, budget, scfg, counter)
        loop = timed_rollout([[it] for it in items], stopping, tok, retriever, budget, scfg, counter)
        unstopped = timed_rollout([items], no_stop, tok, retriever, budget, scfg, counter)
        batched_full = timed_rollout([items], no_reuse, tok, retriever, budget, scfg, counter)
        loop_full = timed_rollout([[it] for it in items], no_reuse, tok, retriever, budget, scfg, counter)
        total = time.perf_counter() - t0
        counter.restore()

    same = sum(a == b for a, b in zip(batched["contexts"], loop["contexts"]))
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads},
        "model": args.model,
        "questions": len(items),
        "budget": budget.model_dump(),
        "max_new_tokens": args.max_new_tokens,
        "batched": batched,
        "per_episode_loop": loop,
        "batched_no_stop": unstopped,
        "batched_no_kv_reuse": batched_full,
        "per_episode_loop_no_kv_reuse": loop_full,
        "speedup_batched_vs_loop": batched["episodes_per_s"] / loop["episodes_per_s"],
        "speedup_batched_vs_naive_loop": batched["episodes_per_s"] / loop_full["episodes_per_s"],
        "speedup_kv_reuse_batched": batched["episodes_per_s"] / batched_full["episodes_per_s"],
        "same_tokens_with_and_without_kv_reuse": batched["contexts"] == batched_full["contexts"]
        and batched["kept_tokens_per_episode"] == batched_full["kept_tokens_per_episode"],
        "speedup_stop_vs_no_stop": batched["episodes_per_s"] / unstopped["episodes_per_s"],
        "same_context_batched_vs_loop": same,
        "seconds_total": total,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nwritten to {out}")
    return 0


def render(r: dict[str, Any]) -> str:
    rows = [("batched rollout", r["batched"]), ("per-episode loop", r["per_episode_loop"]),
            ("batched, no tag stops", r["batched_no_stop"]), ("batched, no KV reuse", r["batched_no_kv_reuse"]),
            ("per-episode loop, no KV reuse", r["per_episode_loop_no_kv_reuse"])]
    lines = [f"model {r['model']}, {r['questions']} questions, budget top_k={r['budget']['top_k']} "
             f"keep={r['budget']['keep_per_turn']} max_turns={r['budget']['max_turns']}, "
             f"max_new_tokens={r['max_new_tokens']}, greedy",
             "",
             "| variant | episodes/s | seconds | policy calls | prefill positions | decode steps "
             "| decoded tok/episode | kept tok/episode | searches/episode |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in rows:
        lines.append(f"| {name} | {v['episodes_per_s']:.3f} | {v['seconds']:.1f} | {v['policy_calls']} "
                     f"| {v['prefill_positions']} | {v['decode_steps']} | {v['decoded_tokens_per_episode']:.1f} "
                     f"| {v['kept_tokens_per_episode']:.1f} | {v['searches_mean']:.2f} |")
    lines += ["",
              f"batched vs loop: {r['speedup_batched_vs_loop']:.2f}x episodes/s "
              f"({r['same_context_batched_vs_loop']}/{r['questions']} identical contexts)",
              f"batched vs a per-episode loop without KV reuse: {r['speedup_batched_vs_naive_loop']:.2f}x",
              f"KV reuse across turns (batched): {r['speedup_kv_reuse_batched']:.2f}x, same tokens: "
              f"{r['same_tokens_with_and_without_kv_reuse']}",
              f"tag stops vs none: {r['speedup_stop_vs_no_stop']:.2f}x episodes/s"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
