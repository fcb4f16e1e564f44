"""DDP vs FSDP (`train.parallel`): what one Train worker holds, and what a step and a checkpoint cost.

    python benchmarks/rl/fsdp_bench.py [--model smollm2-135m-instruct] [--world 2] [--steps 2] [--out ...]

`--world` gloo ranks on this machine (CPU) train the same searcher with the same GRPO batch (8
trajectories of a 400-token prompt and a 60-token searcher turn, rewards varying inside each
group), once with DDP and once with FSDP (`s3_ray.rl.model.sharding`), through `PolicyUpdater` as the
Train worker runs it. Per rank it counts the bytes of what stays resident between steps: the
policy's parameters, the AdamW state, the frozen KL reference and, under FSDP, the unsharded
rollout copy (gradients live only during the backward: as many bytes as the trainable
parameters, sharded likewise under FSDP). It also times a step and gathering a checkpoint (weights
+ optimizer state) on the writing rank. Byte counts are exact; times are one run on a shared
machine. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _bytes(tensors: Any) -> int:
    from s3_ray.rl.model.sharding import is_sharded_tensor

    total = 0
    for t in tensors:
        local = t.to_local() if is_sharded_tensor(t) else t
        total += local.numel() * local.element_size()
    return total


def _optimizer_bytes(optimizer: Any) -> int:
    import torch

    return _bytes(v for entries in optimizer.state.values() for v in entries.values()
                  if isinstance(v, torch.Tensor) and v.dim() > 0)


def _batch(tok: Any, n: int = 8) -> list[Any]:
    import random

    from s3_ray.types import QAItem, Trajectory

    rng = random.Random(0)
    vocab = list(range(100, min(len(tok), 20000)))
    out = []
    for i in range(n):
        prompt = [rng.choice(vocab) for _ in range(400)]
        turn = [rng.choice(vocab) for _ in range(60)]
        out.append(Trajectory(item=QAItem(f"q{i // 4}", "q", ("a",)), prompt_ids=prompt, response_ids=turn,
                              loss_mask=[1] * len(turn), reward=float(i % 2)))
    return out


def _run(rank: int, world: int, port: int, model_name: str, steps: int, out: str) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from s3_ray.config import TrainConfig
    from s3_ray.models import load_causal_lm
    from s3_ray.rl.model.policy import frozen_copy, shard_for_training
    from s3_ray.rl.model.sharding import full_state_dict
    from s3_ray.rl.algo.update import PolicyUpdater

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    plain, tok = load_causal_lm(model_name, for_training=True)
    trajs = _batch(tok)
    cfg = TrainConfig(lr=1e-5, kl_coef=0.01, micro_batch=2, algorithm="grpo")

    results: dict[str, Any] = {}
    for strategy in ("ddp", "fsdp"):
        model = copy.deepcopy(plain)
        ref = copy.deepcopy(plain).eval().requires_grad_(False)
        rollout = None
        if strategy == "fsdp":
            rollout = frozen_copy(plain)
            shard_for_training(model, ref)
            wrapped = model
        else:
            wrapped = DistributedDataParallel(model)
        up = PolicyUpdater(wrapped, ref, cfg, pad_id=tok.pad_token_id)
        times = []
        for _ in range(steps):
            dist.barrier()
            t0 = time.perf_counter()
            up.step(trajs)
            times.append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        if strategy == "fsdp" or rank == 0:  # sharded: every rank gathers, only rank 0 keeps
            full_state_dict(model, keep=rank == 0)
            up.state_dict(keep=rank == 0)
        gather_s = time.perf_counter() - t0
        row = {
            "params_mb": _bytes(model.parameters()) / 2**20,
            "optimizer_mb": _optimizer_bytes(up.optimizer) / 2**20,
            "reference_mb": _bytes(ref.parameters()) / 2**20,
            "rollout_copy_mb": _bytes(rollout.parameters()) / 2**20 if rollout is not None else 0.0,
            "step_s": min(times), "steps_s": times, "checkpoint_gather_s": gather_s,
        }
        row["resident_mb"] = row["params_mb"] + row["optimizer_mb"] + row["reference_mb"] + row["rollout_copy_mb"]
        results[strategy] = row
        del model, ref, rollout, up, wrapped
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/fsdp_bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fsdp.json"))
    args = p.parse_args(argv)

    import tempfile

    import torch.multiprocessing as mp

    from s3_ray.models import load_causal_lm

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    load_causal_lm(args.model)  # convert / build once, before the ranks race for the cache
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "rank0.json"
        mp.spawn(_run, args=(args.world, port, args.model, args.steps, str(raw)), nprocs=args.world)
        per_rank = json.loads(raw.read_text())
    report = {"model": args.model, "world": args.world, "steps": args.steps, "trajectories_per_rank": 8,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "per_rank": per_rank, "seconds": round(time.perf_counter() - t0, 1),
              "load_avg_1m_end": os.getloadavg()[0]}
    ddp, fsdp = per_rank["ddp"], per_rank["fsdp"]
    report["resident_ratio_fsdp_over_ddp"] = fsdp["resident_mb"] / ddp["resident_mb"]
    report["trained_state_ratio_fsdp_over_ddp"] = ((fsdp["params_mb"] + fsdp["optimizer_mb"])
                                                   / (ddp["params_mb"] + ddp["optimizer_mb"]))
    report["step_time_ratio_fsdp_over_ddp"] = fsdp["step_s"] / ddp["step_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{args.model}, {args.world} gloo ranks, per rank (MiB; rank 0):")
    print("| strategy | parameters | AdamW state | reference | rollout copy | resident | step s | checkpoint gather s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in per_rank.items():
        print(f"| {name} | {r['params_mb']:.0f} | {r['optimizer_mb']:.0f} | {r['reference_mb']:.0f} | "
              f"{r['rollout_copy_mb']:.0f} | {r['resident_mb']:.0f} | {r['step_s']:.1f} | {r['checkpoint_gather_s']:.1f} |")
    print(f"FSDP / DDP: trained state (weights + AdamW) {report['trained_state_ratio_fsdp_over_ddp']:.2f}x, "
          f"all resident {report['resident_ratio_fsdp_over_ddp']:.2f}x, step time "
          f"{report['step_time_ratio_fsdp_over_ddp']:.2f}x")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
