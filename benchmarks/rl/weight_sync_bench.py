"""Weight-sync memory and time: what pushing the trainer's weights into rollouts costs, before and
after streaming them, and a LoRA run's adapter push against merged full weights.

    .venv-vllm/bin/python benchmarks/rl/weight_sync_bench.py [--model smollm2-135m-instruct] [--steps 3] [--out ...]

On CPU with the embedded SmolLM2-135M (fp32 master weights, as the trainer holds them):

1. the FSDP rollout copy: a deep copy cast to bf16 afterwards (before) vs `frozen_copy`, cast
   tensor by tensor (after): peak resident memory growth of this process;
2. the sender of a LoRA run's merged weights, into a sink that packs and buckets as
   `VLLMPolicy.load_weights` does: the merged state dict built first and packed in fp32 (before)
   vs `iter_merged_weights` streamed and cast to a bf16 engine's dtype (after): peak RSS growth and
   tracemalloc's peak (the packed bytes are Python objects);
3. the vLLM worker (real CPU engine, its own process): every bucket staged until the commit, each
   unpacked through a copy (before, kept here as `BenchLoader.s3_bench_*`) vs layer by layer as
   buckets arrive (after): peak RSS growth of the engine process during one push;
4. a LoRA run's sync per step (rank `--lora-rank` on every linear layer): merged full weights into
   a plain engine vs the adapter into a LoRA-serving engine: seconds and bytes per step, and the
   engines' decode speed on the same prompts (LoRA serving costs decode time).

Parts 3-4 need vLLM (`scripts/setup_vllm_cpu.sh`, run from `.venv-vllm`); without it they are
skipped. Peak RSS is read from /proc (VmHWM, reset through clear_refs before each measurement), with
glibc returning large blocks at free (`exact_rss`), so it needs Linux and glibc. Prints a table and writes JSON (`benchmarks/results/weight_sync.json`).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from s3_ray.agent.vllm_weights import WeightLoader, in_layer_order, layer_key, pack_tensor, weight_buckets

MIB = float(1 << 20)


class BenchLoader(WeightLoader):
    """The worker extension of this benchmark's plain engine: the streaming loader it inherits,
    plus the previous behaviour for comparison (every bucket staged until the commit, then one
    reload of the whole model from bytes copied into bytearrays)."""

    def s3_bench_stage_all(self, packed: list[Any]) -> int:
        self.__dict__.setdefault("_s3_bench_staged", []).extend(packed)
        return len(packed)

    def s3_bench_commit_all(self) -> int:
        import torch

        staged = self.__dict__.pop("_s3_bench_staged")
        weights = ((n, torch.frombuffer(bytearray(raw), dtype=getattr(torch, d)).reshape(s))
                   for n, d, s, raw in staged)
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        return len(staged)


def exact_rss() -> None:
    """Make resident memory follow what is allocated: glibc serves allocations of 128 KiB and more
    by mmap, returned at free, in this process (mallopt) and in the engine processes it starts
    (inherited environment). Otherwise freed tensors stay resident and the next measurement
    reuses them, which hides its growth."""
    import ctypes

    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 << 10)
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def peak_growth_mib(run: Callable[[], Any], pid: int | None = None) -> tuple[float, float, Any]:
    """(peak RSS growth of `pid` (default: this process) while `run()` runs, in MiB; tracemalloc's
    peak of this process in MiB; what `run` returned)."""
    pid = os.getpid() if pid is None else pid
    gc.collect()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the high-water mark restarts at the current RSS
    before = _status_kib(pid, "VmRSS")
    tracemalloc.start()
    try:
        out = run()
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (_status_kib(pid, "VmHWM") - before) / 1024, traced / MIB, out


def sink(items: Iterable[tuple[str, Any]], dtype: Any, bucket_bytes: int) -> int:
    """Pack and bucket `items` as `VLLMPolicy.load_weights` does, dropping each bucket; bytes sent."""
    sent = 0
    for bucket in weight_buckets((pack_tensor(n, t, dtype) for n, t in in_layer_order(items)), bucket_bytes):
        sent += sum(len(p[3]) for p in bucket)
    return sent


def part_rollout_copy(model: Any) -> dict[str, Any]:
    import torch

    from s3_ray.rl.model.policy import frozen_copy

    fp32 = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    before, _, _ = peak_growth_mib(lambda: copy.deepcopy(model).eval().to(torch.bfloat16))
    after, _, _ = peak_growth_mib(lambda: frozen_copy(model, torch.bfloat16))
    return {"model_fp32_mib": fp32, "before_peak_mib": before, "after_peak_mib": after}


def part_sender(lora_model: Any, bucket_bytes: int) -> dict[str, Any]:
    import torch

    from s3_ray.rl.model.lora import iter_merged_weights, merged_state_dict

    b_rss, b_py, b_bytes = peak_growth_mib(lambda: sink(merged_state_dict(lora_model).items(), None, bucket_bytes))
    a_rss, a_py, a_bytes = peak_growth_mib(lambda: sink(iter_merged_weights(lora_model), torch.bfloat16, bucket_bytes))
    return {"bucket_mib": bucket_bytes / MIB, "before": {"peak_rss_mib": b_rss, "peak_traced_mib": b_py,
                                                         "sent_mib": b_bytes / MIB, "dtype": "float32"},
            "after": {"peak_rss_mib": a_rss, "peak_traced_mib": a_py, "sent_mib": a_bytes / MIB,
                      "dtype": "bfloat16"}}


def engine_pid() -> int:
    """The vLLM engine core process (a child of this one that is not a resource tracker)."""
    import psutil

    kids = [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    if not kids:
        raise RuntimeError("no vLLM engine process found among this process's children")
    return max(kids, key=lambda p: p.memory_info().rss).pid


def old_push(engine: Any, state: dict[str, Any]) -> int:
    """The previous push: fp32 buckets, all staged in the worker, then one reload."""
    packed = (pack_tensor(n, t) for n, t in state.items())
    sent = 0
    for bucket in weight_buckets(packed, engine.bucket_bytes):
        engine.llm.collective_rpc("s3_bench_stage_all", timeout=600.0, args=(bucket,))
        sent += len(bucket)
    engine.llm.collective_rpc("s3_bench_commit_all", timeout=600.0)
    engine.llm.reset_prefix_cache()
    return sent


def decode_speed(engine: Any, prompts: list[list[int]]) -> float:
    """Tokens per second of one greedy batch on `engine` (its current weights or adapter)."""
    before = engine.stats.tokens_generated
    t0 = time.perf_counter()
    engine.generate(prompts)
    return (engine.stats.tokens_generated - before) / (time.perf_counter() - t0)


def part_engines(name: str, model: Any, lora_model: Any, tok: Any, steps: int, bucket_bytes: int) -> dict[str, Any]:
    from s3_ray.agent.vllm_policy import VLLMPolicy
    from s3_ray.config import SearcherConfig
    from s3_ray.rl.model.lora import iter_merged_weights
    from s3_ray.rl.model.weight_sync import RolloutWeights

    scfg = SearcherConfig(model=name, temperature=0.0, max_new_tokens=48, max_prompt_tokens=512, backend="vllm")
    prompts = [list(tok.encode(f"<question>Question {i}: who founded the town?</question>", add_special_tokens=False))
               for i in range(8)]
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    plain = VLLMPolicy(name, tok, scfg, bucket_bytes=bucket_bytes,
                       worker_extension_cls=f"{Path(__file__).stem}.BenchLoader")
    out["engine_start_s"] = time.perf_counter() - t0
    try:
        pid = engine_pid()
        state = model.state_dict()
        b_rss, _, _ = peak_growth_mib(lambda: old_push(plain, state), pid=pid)
        a_rss, _, _ = peak_growth_mib(lambda: plain.load_weights(state), pid=pid)
        layer_mib = max(sum(t.numel() * t.element_size() for n, t in state.items() if layer_key(n) == key)
                        for key in {layer_key(n) for n in state}) / MIB
        out["worker"] = {"before_peak_mib": b_rss, "after_peak_mib": a_rss, "bucket_mib": bucket_bytes / MIB,
                         "largest_layer_mib": layer_mib, "engine_dtype": str(plain.dtype).removeprefix("torch."),
                         "pushed_mib": plain.last_sync.nbytes / MIB}
        merged = []
        for step in range(steps):
            _nudge_adapter(lora_model, step)
            seconds = plain.load_weights(iter_merged_weights(lora_model))
            merged.append({"seconds": seconds, "bytes": plain.last_sync.nbytes})
        out["merged_decode_tok_s"] = decode_speed(plain, prompts)
    finally:
        plain.close()
    weights = RolloutWeights()
    t0 = time.perf_counter()
    weights.start_engine(lora_model, tok, scfg, seed=0)
    out["lora_engine_start_s"] = time.perf_counter() - t0
    try:
        adapter = []
        for step in range(steps):
            _nudge_adapter(lora_model, step)
            weights.mark_stale()
            seconds = weights.push(lora_model)
            adapter.append({"seconds": seconds, "bytes": weights.engine.last_sync.nbytes})
        out["adapter_decode_tok_s"] = decode_speed(weights.engine, prompts)
    finally:
        weights.engine.close()
    out["merged_steps"], out["adapter_steps"] = merged, adapter
    out["per_step"] = {kind: {"seconds": sum(s["seconds"] for s in rows) / len(rows),
                              "mib": sum(s["bytes"] for s in rows) / len(rows) / MIB}
                       for kind, rows in (("merged", merged), ("adapter", adapter))}
    return out


def _nudge_adapter(model: Any, step: int) -> None:
    """Stand-in for an update: move every adapter B matrix a little (seeded)."""
    import torch

    gen = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=3, help="simulated LoRA steps per sync kind (part 4)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--bucket-mib", type=int, default=16, help="bucket size of the pushes (default 16 MiB)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "weight_sync.json"))
    args = p.parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        p.error("peak memory is read from /proc: Linux only")
    exact_rss()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.path.insert(0, str(Path(__file__).parent))  # the engine process resolves BenchLoader by name

    from s3_ray.config import TrainConfig
    from s3_ray.models import load_causal_lm
    from s3_ray.rl.model.lora import apply_lora

    model, tok = load_causal_lm(args.model, num_threads=args.threads)
    lora_model = apply_lora(copy.deepcopy(model), TrainConfig(lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank))
    bucket = args.bucket_mib << 20
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads},
        "model": args.model, "lora_rank": args.lora_rank,
        "rollout_copy": part_rollout_copy(model),
        "sender_lora_merged": part_sender(lora_model, bucket),
    }
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        results["engines"] = None
        results["engines_skipped"] = "vllm is not installed here (run from .venv-vllm: scripts/setup_vllm_cpu.sh)"
    else:
        results["engines"] = part_engines(args.model, model, lora_model, tok, args.steps, bucket)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nwritten to {out}")
    return 0


def render(r: dict[str, Any]) -> str:
    rc, snd = r["rollout_copy"], r["sender_lora_merged"]
    lines = [f"model {r['model']} (fp32 parameters {rc['model_fp32_mib']:.0f} MiB), LoRA rank {r['lora_rank']}", "",
             "| peak memory growth (MiB) | before | after |", "|---|---|---|",
             f"| rollout copy to bf16 (this process, RSS) | {rc['before_peak_mib']:.0f} | {rc['after_peak_mib']:.0f} |",
             f"| merged LoRA weights packed for the engine (RSS) | {snd['before']['peak_rss_mib']:.0f} "
             f"| {snd['after']['peak_rss_mib']:.0f} |",
             f"| the same, Python heap (tracemalloc) | {snd['before']['peak_traced_mib']:.0f} "
             f"| {snd['after']['peak_traced_mib']:.0f} |",
             f"| bytes sent ({snd['before']['dtype']} -> {snd['after']['dtype']} engine) "
             f"| {snd['before']['sent_mib']:.0f} | {snd['after']['sent_mib']:.0f} |"]
    eng = r.get("engines")
    if eng:
        w = eng["worker"]
        lines.append(f"| vLLM worker during one push ({w['engine_dtype']}, {w['bucket_mib']:.0f} MiB buckets; "
                     f"largest layer {w['largest_layer_mib']:.0f} MiB) | {w['before_peak_mib']:.0f} "
                     f"| {w['after_peak_mib']:.0f} |")
        ps = eng["per_step"]
        lines += ["", "| LoRA sync per step | seconds | MiB | decode tok/s |", "|---|---|---|---|",
                  f"| merged full weights | {ps['merged']['seconds']:.2f} | {ps['merged']['mib']:.1f} "
                  f"| {eng['merged_decode_tok_s']:.1f} |",
                  f"| adapter only | {ps['adapter']['seconds']:.3f} | {ps['adapter']['mib']:.2f} "
                  f"| {eng['adapter_decode_tok_s']:.1f} |",
                  "", f"engine starts: plain {eng['engine_start_s']:.0f} s, LoRA-serving {eng['lora_engine_start_s']:.0f} s"]
    else:
        lines += ["", f"vLLM parts skipped: {r.get('engines_skipped')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
