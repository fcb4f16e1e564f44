"""The GPU check: the library's update step, rollout and answer log-likelihood on one device, with
randomly initialised models of real shapes, peak memory measured beside the memory plan's estimate.

    python scripts/gpu_check.py [--device cuda] [--shapes smollm2-135m-instruct,Qwen/Qwen2.5-1.5B-Instruct]
    python scripts/gpu_check.py --device cpu --tiny        # the same code path on tiny shapes (tests)

Per shape and stage it prints one JSON line (`shape`, `stage`, `measured_gib`, `estimate_gib`,
`seconds`) and a table at the end. On CUDA the measured peak is `torch.cuda.max_memory_allocated`;
on CPU it is the memory tracker's peak of the real step (rollout and log-likelihood: none). The
update step's estimate is the plan's fake-tensor step (`s3_ray.rl.algo.memory_step`, GPU
semantics); rollout and log-likelihood are estimated as weights + KV cache of the batch.
Needs torch, transformers, peft, pydantic and pyyaml (no Ray, vLLM, faiss or bm25s) and no network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

TINY = {"model_type": "qwen2", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
DEFAULT_SHAPES = "smollm2-135m-instruct,Qwen/Qwen2.5-1.5B-Instruct"
GIB = 1024**3


class FixedRetriever:
    """Answers every query with the same `k` passages (the check measures the model, not retrieval)."""

    def search(self, queries: list[str], k: int) -> list[list[Any]]:
        from s3_ray.types import Passage, SearchHit

        return [[SearchHit(Passage(f"d{i}", f'"Doc {i}"\nthe town river company founder born {i}'), 1.0 / (i + 1))
                 for i in range(k)] for _ in queries]


def _tokenizer(tmp: str) -> Any:
    from transformers import AutoTokenizer

    from s3_ray.models.tiny import build_tiny_model

    build_tiny_model(__import__("pathlib").Path(tmp), layers=1, hidden=32)
    return AutoTokenizer.from_pretrained(tmp)


class Meter:
    """Peak memory and seconds of one stage on `device`."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> Meter:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak: float | None = torch.cuda.max_memory_allocated() / GIB
        else:
            self.peak = None
        self.seconds = time.perf_counter() - self.start


def run_shape(name: str, shape: dict[str, Any], device: str, tok: Any, report: Any) -> None:
    import torch

    from s3_ray.agent.policy import HFPolicy
    from s3_ray.agent.rollout import run_rollout
    from s3_ray.config import load_config
    from s3_ray.generation.likelihood import answer_loglik
    from s3_ray.models.shapes import decoder_params, kv_bytes_per_token
    from s3_ray.plans.memory import step_spec
    from s3_ray.rl.algo.memory_step import build_model, measure_step, synthetic_trajectories
    from s3_ray.rl.algo.update import PolicyUpdater
    from s3_ray.rl.model.policy import SearcherPolicy
    from s3_ray.rl.model.precision import precision_for
    from s3_ray.types import QAItem

    tiny = device == "cpu"
    cfg = load_config(None, ["train.kl_coef=0.01", "train.algorithm=grpo",
                             f"train.micro_batch={2 if tiny else 4}", f"train.questions_per_step={2 if tiny else 4}",
                             "train.group_size=2", f"searcher.max_new_tokens={8 if tiny else 64}",
                             f"resources.prompt_tokens={32 if tiny else 400}",
                             f"resources.passage_tokens={8 if tiny else 160}"])
    spec = {**step_spec(cfg, gpu=not tiny, shape=shape)}
    estimate = measure_step(spec)  # fake tensors, world size 1: nothing leaks
    real = None
    if tiny:
        real = measure_step({**spec, "fake": False, "gpu": False})
    vocab = int(shape["vocab_size"])
    weights_bf16 = decoder_params(shape) * 2 / GIB

    # 1. answer log-likelihood with a frozen bf16 model (the generator's job)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    frozen = build_model(shape, fake=False).to(device=device, dtype=dtype).eval()
    rows = [([3 + (i * 31 + j) % (vocab - 3) for j in range(512 if not tiny else 24)], [5, 6, 7, 8]) for i in range(16)]
    with Meter(device) as m:
        answer_loglik(frozen, rows, batch_size=8)
    kv = 8 * 516 * kv_bytes_per_token(shape) / GIB if not tiny else 0.0
    report(name, "answer_loglik", m, weights_bf16 + kv if device == "cuda" else None)
    del frozen

    # 2. the update step through the library's PolicyUpdater
    plain = build_model(shape, fake=False).to(device)
    plain.train(True)
    policy = SearcherPolicy(cfg, None, None, tok, world=1, rank=0, precision=precision_for(device))
    policy._build(plain)
    updater = PolicyUpdater(policy.model, policy.ref, cfg.train, pad_id=0, temperature=cfg.searcher.temperature)
    trajectories = synthetic_trajectories(spec["rows"], cfg.train.group_size, spec["prompt_tokens"],
                                          [tuple(s) for s in spec["segments"]], vocab)
    updater.step(trajectories)  # the first step creates AdamW's moments; the second is the steady state
    with Meter(device) as m:
        updater.step(trajectories)
    est = estimate["peak"] / GIB
    report(name, "update_step", m, est, measured_cpu=None if real is None else real["peak"] / GIB)

    # 3. a rollout with the trained model (HFPolicy: the transformers rollout engine)
    policy.model.eval()
    items = [QAItem(f"q{i}", f"Who founded the company {i}?", ("x",)) for i in range(4 if tiny else 16)]
    with Meter(device) as m:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            run_rollout(items, HFPolicy(policy.model, tok, cfg.searcher), tok, FixedRetriever(), cfg.rollout,
                        cfg.searcher)
    report(name, "rollout", m, None)
    del policy, updater, plain
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated model names (known shapes)")
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen2 shape instead of --shapes (CPU tests)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    from s3_ray.models.shapes import model_shape

    shapes = {"tiny-qwen2": TINY} if args.tiny else {n: model_shape(n) for n in args.shapes.split(",")}
    lines: list[dict[str, Any]] = []

    def report(shape: str, stage: str, meter: Meter, estimate: float | None, measured_cpu: float | None = None) -> None:
        measured = meter.peak if meter.peak is not None else measured_cpu
        line = {"shape": shape, "stage": stage, "device": args.device,
                "measured_gib": None if measured is None else round(measured, 3),
                "estimate_gib": None if estimate is None else round(estimate, 3), "seconds": round(meter.seconds, 2)}
        lines.append(line)
        print(json.dumps(line), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tok = _tokenizer(tmp)
        for name, shape in shapes.items():
            run_shape(name, shape, args.device, tok, report)
    print("\n| shape | stage | measured GiB | plan estimate GiB | seconds |\n|---|---|---|---|---|")
    for ln in lines:
        print(f"| {ln['shape']} | {ln['stage']} | {ln['measured_gib']} | {ln['estimate_gib']} | {ln['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
