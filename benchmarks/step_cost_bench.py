"""What one informative GRPO group costs to learn from: full fine-tuning vs LoRA, with and without KL.

    python benchmarks/step_cost_bench.py [--group 8] [--repeats 2] [--lora-rank 16]

Samples one real group: `--group` rollouts of one embedded training question from SmolLM2-135M
(temperature 1.0, the demo's budgets), gives the rollouts alternating rewards (so the group has a
signal and the update runs), then times `PolicyUpdater.step` on that group for each variant:

* full fine-tuning, KL to a frozen reference copy (`train.kl_coef=0.01`);
* full fine-tuning without KL (no reference forward);
* LoRA (`train.lora_rank`), KL to the adapter-off model (no second copy, one more forward);
* LoRA without KL.

Reports seconds per informative group (update only; rollout and reward are the same for all four),
split into the reference forward and the policy forward/backward, the positions read and the
trainable parameters. Prints a table and writes benchmarks/results/step_cost.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/step_cost_bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "step_cost.json"))
    args = p.parse_args(argv)

    import torch

    from s3_ray.agent.policy import HFPolicy
    from s3_ray.agent.rollout import run_rollout
    from s3_ray.config import DataConfig, load_config
    from s3_ray.data.corpus import read_corpus
    from s3_ray.data.embedded import embedded_dir, load_split
    from s3_ray.models import load_causal_lm
    from s3_ray.retrieval import BM25Retriever
    from s3_ray.rl.policy import build_policy
    from s3_ray.rl.update import PolicyUpdater

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", ["searcher.temperature=1.0"])
    retriever = BM25Retriever.build(read_corpus(embedded_dir() / "corpus.jsonl"))
    question = load_split(DataConfig(train_limit=1), "train")[0]
    base, tok = load_causal_lm(cfg.searcher.model, num_threads=args.threads, for_training=True)
    trajs = run_rollout([question] * args.group, HFPolicy(base, tok, cfg.searcher), tok, retriever, cfg.rollout,
                        cfg.searcher)
    for i, t in enumerate(trajs):
        t.reward = float(i % 2)
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajs]

    variants = {"full, KL": {"lora_rank": 0, "kl_coef": 0.01}, "full, no KL": {"lora_rank": 0, "kl_coef": 0.0},
                f"LoRA r={args.lora_rank}, KL": {"lora_rank": args.lora_rank, "kl_coef": 0.01},
                f"LoRA r={args.lora_rank}, no KL": {"lora_rank": args.lora_rank, "kl_coef": 0.0}}
    rows = []
    for name, over in variants.items():
        tc = cfg.train.model_copy(update={**over, "micro_batch": args.group})
        policy, ref = build_policy(copy.deepcopy(base), tc)
        updater = PolicyUpdater(policy, ref, tc, pad_id=tok.pad_token_id, temperature=1.0)
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        times, parts = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            m = updater.step(trajs)
            times.append(time.perf_counter() - t0)
            parts.append((m["time/ref_forward_s"], m["time/policy_fwd_bwd_s"], m["update/positions"]))
        rows.append({"variant": name, "seconds_per_group": statistics.median(times), "all_seconds": times,
                     "ref_forward_s": statistics.median(p[0] for p in parts),
                     "policy_fwd_bwd_s": statistics.median(p[1] for p in parts),
                     "positions": parts[0][2], "trainable_params": trainable})
        print(f"{name}: {statistics.median(times):.1f} s", flush=True)
        del policy, ref, updater

    full = rows[0]["seconds_per_group"]
    report = {"group": args.group, "question": question.id, "tokens_per_rollout": lengths,
              "searches_mean": statistics.mean(t.num_searches for t in trajs), "threads": args.threads,
              "load_avg_1m_end": os.getloadavg()[0], "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("| variant | s per informative group | vs full+KL | reference fwd s | policy fwd+bwd s | trainable |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seconds_per_group']:.1f} | {r['seconds_per_group'] / full:.2f}x | "
              f"{r['ref_forward_s']:.1f} | {r['policy_fwd_bwd_s']:.1f} | {r['trainable_params'] / 1e6:.2f} M |")
    print(f"{args.group} rollouts of {statistics.mean(lengths):.0f} tokens on average; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
