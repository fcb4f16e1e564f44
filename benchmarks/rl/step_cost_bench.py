"""What one informative RL step costs, against the machine's floor: rollout, reward and update.

    python benchmarks/rl/step_cost_bench.py [--searcher CKPT | --warmup-steps 24] [--group 8] [--repeats 1]
        [--lora-rank 16] [--allow-busy]

One real group: `--group` rollouts (T=1.0, the demo's budgets) of one filtered embedded training
question from a *warmed-up* searcher (a checkpoint, e.g. the RL proof's step-0 one, or SmolLM2
after an in-process follow warm-up: 24 x 4, follow 0.5, names of the top document), so the
episodes search (`searches_mean` says how often). The frozen generator (SmolLM2, in-process, no
cache) scores them with `reward.metric=mixed`, which gives every group a signal. Then, per
variant, on those same rows:

* `floor_s`: a plain forward + backward of the variant's model in its precision over the same
  padded rows (next-token cross-entropy, no RL machinery): what the machine needs at least;
* `update_s`: `PolicyUpdater.step` (GRPO, one on-policy epoch), and its ratio to the floor;
* `step_s`: rollout + reward + update, the cost of one informative group.

Variants: full fine-tuning without KL in fp32 and under bf16 autocast (`train.cpu_compute=bf16`;
fp32 master weights, fp32 log-softmax), full with KL 0.01, LoRA without KL. The bf16 row also
reports how far its log-probs differ from fp32's on the group's searcher tokens (the PPO
ratio's honesty). Writes benchmarks/results/step_cost.json with the load average at start and
end; a busy machine (load > 1.0 at start) is refused unless `--allow-busy`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # load_guard, shared by all groups

import load_guard  # noqa: E402  (sibling module)


def plain_fwd_bwd(model: Any, batch: Any) -> float:
    """Seconds of one forward + backward over the batch's rows: next-token cross-entropy over every
    real position, scored as the update scores tokens (chunked LM head, same autocast)."""
    from s3_ray.rl.algo.batch import grid_logprobs

    t0 = time.perf_counter()
    logp = grid_logprobs(model, batch.input_ids, batch.attention_mask, 1.0, 0).logprobs
    real = batch.attention_mask[:, 1:].to(logp.dtype)
    loss = -(logp * real).sum() / real.sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/step_cost_bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--searcher", default=None, help="a warmed-up searcher checkpoint (default: warm up SmolLM2 here)")
    p.add_argument("--warmup-steps", type=int, default=24)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=None,
                   help="variant names to run (default: all four; the bf16 one only on a CPU with native bf16 "
                        "matmuls, since emulated bf16 took over 5 min for one floor + update on an AVX2 CPU "
                        "against 90 s in fp32)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "step_cost.json"))
    load_guard.add_argument(p)
    args = p.parse_args(argv)
    machine = load_guard.start(args.allow_busy)

    import torch

    import exploration_probe
    from s3_ray.agent.policy import HFPolicy
    from s3_ray.agent.rollout import rollout_stats, run_rollout
    from s3_ray.clients.generator import GeneratorClient
    from s3_ray.clients.retriever import RetrieverClient
    from s3_ray.config import DataConfig, RewardConfig, load_config
    from s3_ray.data.corpus import read_corpus
    from s3_ray.data.embedded import embedded_dir, load_split
    from s3_ray.generation import TransformersGenerator
    from s3_ray.models import load_causal_lm
    from s3_ray.retrieval import BM25Retriever
    from s3_ray.reward import BaselineCache, BaselineSettings, RewardScorer, precompute_baseline
    from s3_ray.reward.training_filter import filter_unanswered
    from s3_ray.rl.algo.batch import collate, token_logprobs
    from s3_ray.rl.model.policy import build_policy
    from s3_ray.rl.model.precision import configure_cpu_compute
    from s3_ray.rl.algo.update import PolicyUpdater

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(REPO / "jobs" / "configs" / "demo.yaml", ["searcher.temperature=1.0"])
    retriever = BM25Retriever.build(read_corpus(embedded_dir() / "corpus.jsonl"))
    gen = TransformersGenerator(cfg.generator.model, num_threads=args.threads,
                                max_new_tokens=cfg.generator.max_new_tokens)
    client = GeneratorClient.in_process(gen)
    pool = load_split(DataConfig(train_limit=64), "train")
    with tempfile.TemporaryDirectory() as tmp:
        baseline = BaselineCache(Path(tmp) / "baseline.jsonl",
                                 BaselineSettings(generator=gen.model_id, init_k=cfg.rollout.init_k, retriever="bm25",
                                                  backend="transformers", decoding=str(gen.decoding)))
        precompute_baseline(pool[:16], retriever, client, cfg.rollout.init_k, baseline, progress=False)
        bridge = [it for it in filter_unanswered(pool[:16], baseline)[0] if it.meta.get("type") == "bridge"]
        question = bridge[0]
        base, tok = load_causal_lm(args.searcher or cfg.searcher.model, num_threads=args.threads, for_training=True)
        warm_s = 0.0
        if args.searcher is None and args.warmup_steps:
            t0 = time.perf_counter()
            warm = argparse.Namespace(seed=0, warmup_steps=args.warmup_steps, warmup_batch=4, warmup_lr=1e-4,
                                      follow=0.5, follow_docs=1)
            exploration_probe.warm_up(base, tok, retriever, [it for it in pool if it.id != question.id], warm)
            warm_s = time.perf_counter() - t0
        base.eval()
        t0 = time.perf_counter()
        trajs = run_rollout([question] * args.group, HFPolicy(base, tok, cfg.searcher), tok,
                            RetrieverClient.in_process(retriever), cfg.rollout, cfg.searcher)
        rollout_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = RewardScorer(client, baseline, RewardConfig(metric="mixed")).score(trajs)
        reward_s = time.perf_counter() - t0
    for t, r in zip(trajs, results):
        t.reward = r.reward
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajs]
    stats = rollout_stats(trajs)
    print(f"rollout {rollout_s:.1f} s ({stats['searches_mean']:.2f} searches per episode), reward {reward_s:.1f} s",
          flush=True)

    variants = {"full, no KL, fp32": {"lora_rank": 0, "kl_coef": 0.0, "cpu_compute": "fp32"},
                "full, no KL, bf16": {"lora_rank": 0, "kl_coef": 0.0, "cpu_compute": "bf16"},
                "full, KL 0.01, fp32": {"lora_rank": 0, "kl_coef": 0.01, "cpu_compute": "fp32"},
                f"LoRA r={args.lora_rank}, no KL, fp32": {"lora_rank": args.lora_rank, "kl_coef": 0.0,
                                                          "cpu_compute": "fp32"}}
    base.requires_grad_(True)  # the warm-up leaves it frozen; every variant trains a copy
    from s3_ray.rl.model.precision import cpu_has_native_bf16

    wanted = args.variants or [v for v in variants if "bf16" not in v or cpu_has_native_bf16()]
    unknown = sorted(set(wanted) - set(variants))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(variants)}")
    rows, fp32_logp = [], None
    for name, over in ((n, variants[n]) for n in wanted):
        tc = cfg.train.model_copy(update={**over, "micro_batch": args.group})
        configure_cpu_compute(tc.cpu_compute)
        policy, ref = build_policy(copy.deepcopy(base), tc)
        policy.train()
        batch = collate(trajs, tok.pad_token_id)
        logp = token_logprobs(policy, batch)[batch.loss_mask.bool()]
        if over["cpu_compute"] == "fp32" and over["lora_rank"] == 0 and fp32_logp is None:
            fp32_logp = logp
        floors, updates, parts = [], [], []
        for _ in range(args.repeats):
            floors.append(plain_fwd_bwd(policy, batch))
            updater = PolicyUpdater(policy, ref, tc, pad_id=tok.pad_token_id, temperature=1.0)
            t0 = time.perf_counter()
            m = updater.step(trajs)
            updates.append(time.perf_counter() - t0)
            parts.append((m["time/ref_forward_s"], m["update/positions"]))
        row = {"variant": name, "floor_s": statistics.median(floors), "update_s": statistics.median(updates),
               "ref_forward_s": statistics.median(x[0] for x in parts), "positions": parts[0][1],
               "trainable_params": sum(q.numel() for q in policy.parameters() if q.requires_grad),
               "all_floor_s": floors, "all_update_s": updates}
        row["update_over_floor"] = row["update_s"] / row["floor_s"]
        row["step_s"] = rollout_s + reward_s + row["update_s"]
        if over["cpu_compute"] == "bf16" and fp32_logp is not None:
            diff = (logp - fp32_logp).abs()
            row["logprob_abs_diff_vs_fp32"] = {"mean": diff.mean().item(), "max": diff.max().item()}
        rows.append(row)
        print(f"{name}: floor {row['floor_s']:.1f} s, update {row['update_s']:.1f} s "
              f"({row['update_over_floor']:.2f}x), step {row['step_s']:.1f} s", flush=True)
        del policy, ref
    configure_cpu_compute("fp32")

    report = {"group": args.group, "question": question.id, "searcher": (f"checkpoint {Path(args.searcher).name}" if args.searcher else None) or
              f"{cfg.searcher.model} + {args.warmup_steps} x 4 follow warm-up", "warmup_s": round(warm_s, 1),
              "tokens_per_rollout": lengths, "searches_mean": stats["searches_mean"],
              "malformed_rate": stats["malformed_rate"], "rewards": [t.reward for t in trajs],
              "rollout_s": rollout_s, "reward_s": reward_s, "reward_metric": "mixed", "threads": args.threads,
              "native_bf16": cpu_has_native_bf16(), "machine": load_guard.finish(machine), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("| variant | floor s | update s | update / floor | rollout s | reward s | step s | trainable |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['floor_s']:.1f} | {r['update_s']:.1f} | {r['update_over_floor']:.2f}x | "
              f"{rollout_s:.1f} | {reward_s:.1f} | {r['step_s']:.1f} | {r['trainable_params'] / 1e6:.1f} M |")
    print(f"{args.group} rollouts of {statistics.mean(lengths):.0f} tokens on average; load average "
          f"{report['machine']['load_avg_1m_start']} -> {report['machine']['load_avg_1m_end']}; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
