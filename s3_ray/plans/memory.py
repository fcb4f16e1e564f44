"""The memory plan: every GPU actor's peak memory beside the GPU it lands on, before anything loads.

`add_memory_plan` puts `plan.memory` (one entry per actor: `actor`, `count`, `gpu`, `gpu_memory_gib`,
`peak_gib`, `parts` in GiB: weights, gradients, optimizer_state, activations, logits, kv_cache,
index, cuda_context) into a job's plan, and a `problems` line for every GPU whose actors need
more than it has, so a real run stops before Ray starts.

* The training worker (and the KL reference and rollout copy it holds) comes from one real update
  step of the configured model shape, micro-batch, lengths and world size under fake tensors
  (`s3_ray.rl.algo.memory_step`, run in a subprocess), cached on disk by the config parts it reads
  and the source of the modules it runs (`S3RAY_MEMORY_CACHE`, default ~/.cache/s3-ray/memory-plan).
* vLLM engines (a rollout engine, generator replicas) reserve `gpu_memory_utilization` x GPU memory:
  the weights (bf16, split over tensor-parallel GPUs) and, in the rest, the KV cache
  (2 x layers x KV heads x head dim x 2 bytes per token), which must hold one `max_model_len` sequence.
* A retriever replica on a GPU holds its faiss index (flat: dim x 4 bytes per vector, 2 in fp16;
  IVF-PQ: its code bytes + an 8-byte id per vector, plus the centroids) and its encoder (fp32).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config
from s3_ray.plans.gpus import gpu_for
from s3_ray.plans.plan import Plan

GIB = 1024**3
CUDA_CONTEXT_GIB = 0.5  # CUDA context + allocator slack of one process on one GPU
FAISS_TEMP_GIB = 1.5  # StandardGpuResources' scratch memory
KNOWN_CORPORA = {"wiki-18": 21_015_324, "wiki18": 21_015_324, "psgs_w100": 21_015_324}
PARTS = ("weights", "gradients", "optimizer_state", "activations", "logits", "kv_cache", "index", "cuda_context")
STEP_SOURCES = ("rl/algo", "rl/model", "models")  # what the fake step runs: its cache key reads their source


def _gib(n: float) -> float:
    return round(n / GIB, 2)


def _entry(actor: str, count: int, where: dict[str, Any], parts: dict[str, float], **extra: Any) -> dict[str, Any]:
    full = {p: round(parts.get(p, 0.0), 2) for p in PARTS}
    return {"actor": actor, "count": count, "gpu": where["gpu"], "gpu_memory_gib": where["gpu_memory_gib"],
            "peak_gib": round(sum(full.values()), 2), "parts": full, **extra}


def _cpu_entry(actor: str, count: int, why: str) -> dict[str, Any]:
    return {"actor": actor, "count": count, "gpu": "none (CPU)", "gpu_memory_gib": None, "peak_gib": None,
            "parts": None, "note": why}


# ------------------------------------------------------------------ the training worker
def trajectory_shape(cfg: S3Config) -> tuple[int, list[tuple[int, int]]]:
    """(prompt tokens, response segments as (tokens, loss mask)) of the longest trajectory the budgets
    allow: max_turns + 2 searcher turns of max_new_tokens, top_k passages after each search."""
    r, res = cfg.rollout, cfg.resources
    prompt = res.prompt_tokens + r.init_k * res.passage_tokens
    turn, docs = (cfg.searcher.max_new_tokens, 1), (r.top_k * res.passage_tokens, 0)
    segments = [s for _ in range(r.max_turns) for s in (turn, docs)] + [turn, turn]
    limit = cfg.train.max_seq_len
    if limit is not None:  # collate cuts the prompt from the left; the response must fit whole
        while sum(n for n, _ in segments) > limit - 1 and segments:
            segments.pop()
        prompt = max(1, min(prompt, limit - sum(n for n, _ in segments)))
    return prompt, segments


def step_spec(cfg: S3Config, gpu: bool, shape: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `memory_step.measure_step` runs for this config's training worker (`shape`: the
    searcher's model config, default `searcher.model`'s)."""
    from s3_ray.models.shapes import model_shape

    prompt, segments = trajectory_shape(cfg)
    t = cfg.train
    return {"config": {"train": t.model_dump(), "searcher": cfg.searcher.model_dump()},
            "shape": shape or model_shape(cfg.searcher.model), "rows": t.questions_per_step * t.group_size // t.num_workers,
            "prompt_tokens": prompt, "segments": segments, "fake": True, "gpu": gpu}


def _code_fingerprint() -> str:
    import torch
    import transformers

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    for folder in STEP_SOURCES:
        for path in sorted((root / folder).glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("S3RAY_MEMORY_CACHE", "~/.cache/s3-ray/memory-plan")).expanduser()


def measured_step(spec: dict[str, Any], timeout_s: float = 900.0) -> dict[str, Any]:
    """`measure_step(spec)` in a fresh interpreter (no fake process group leaks here), cached."""
    key = hashlib.sha256((json.dumps(spec, sort_keys=True) + _code_fingerprint()).encode()).hexdigest()[:24]
    cached = cache_dir() / f"{key}.json"
    if cached.is_file():
        return {**json.loads(cached.read_text()), "cached": True}
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "s3_ray.rl.algo.memory_step"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=timeout_s, env=env, cwd=root)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the fake-tensor training step failed: {last}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(cached)
    return {**result, "cached": False}


def train_entries(cfg: S3Config, problems: list[str]) -> list[dict[str, Any]]:
    """The train worker, its KL reference and its rollout engine (one set per worker, one GPU each)."""
    from s3_ray.plans.entries import train_workers

    t = cfg.train
    workers = train_workers(cfg)
    if not workers["gpus_per_worker"]:
        return [_cpu_entry("train worker", t.num_workers, "train.gpus_per_worker resolves to 0: trains on CPU")]
    where = gpu_for(cfg, "train", problems)
    share = float(workers["gpus_per_worker"])
    if where["gpu_memory_gib"] is not None:
        where = {**where, "gpu_memory_gib": round(where["gpu_memory_gib"] * min(share, 1.0), 2)}
    try:
        step = measured_step(step_spec(cfg, gpu=True))
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
        problems.append(f"memory: train worker: {err}")
        return [{**_cpu_entry("train worker", t.num_workers, str(err)), "gpu": where["gpu"]}]
    p = step["parts"]
    source = {"source": f"one fake-tensor update step at world size {step['world']}"
                        f"{' (cached)' if step.get('cached') else ''}"}
    entries = [_entry("train worker", t.num_workers, where, {
        "weights": _gib(p["weights"]), "gradients": _gib(p["gradients"]), "optimizer_state": _gib(p["optimizer"]),
        "activations": _gib(p["activations"]), "logits": _gib(p["logits"]), "cuda_context": CUDA_CONTEXT_GIB},
        **source)]
    if step["reference"]:
        entries.append(_entry("KL reference", t.num_workers, where, {"weights": _gib(step["reference"])},
                              shares_gpu_with="train worker", **source))
    if cfg.searcher.backend == "vllm":
        entries.append(vllm_entry("rollout engine", t.num_workers, where, cfg.searcher.model,
                                  cfg.searcher.gpu_memory_utilization, 1,
                                  cfg.searcher.max_prompt_tokens + cfg.searcher.max_new_tokens, problems,
                                  shares_gpu_with="train worker",
                                  sleeps_during_update=cfg.searcher.vllm_sleep_level > 0))
    elif step["rollout_copy"]:
        entries.append(_entry("rollout engine", t.num_workers, where, {"weights": _gib(step["rollout_copy"])},
                              shares_gpu_with="train worker", note="transformers: an unsharded bf16 copy", **source))
    return entries


# ------------------------------------------------------------------ formulas
def vllm_entry(actor: str, count: int, where: dict[str, Any], model: str, utilization: float, tp: int,
               max_model_len: int, problems: list[str], **extra: Any) -> dict[str, Any]:
    """A vLLM engine on one GPU of `tp`: it reserves `utilization` x the GPU; weights, then KV cache."""
    from s3_ray.models.shapes import ShapeError, decoder_params, kv_bytes_per_token, model_shape

    try:
        shape = model_shape(model)
    except ShapeError as err:
        problems.append(f"memory: {actor}: {err}")
        return {**_cpu_entry(actor, count, str(err)), "gpu": where["gpu"]}
    weights = decoder_params(shape) * 2 / tp / GIB
    kv_token = kv_bytes_per_token(shape) / tp
    gpu = where["gpu_memory_gib"]
    if gpu is None:
        return _entry(actor, count, where, {"weights": weights}, **extra)
    reserved = utilization * gpu
    kv = max(0.0, reserved - weights - CUDA_CONTEXT_GIB)
    entry = _entry(actor, count, where, {"weights": weights, "kv_cache": kv, "cuda_context": CUDA_CONTEXT_GIB},
                   kv_cache_tokens=int(kv * GIB / kv_token), gpu_memory_utilization=utilization,
                   tensor_parallel_size=tp, **extra)
    if kv * GIB < max_model_len * kv_token:
        problems.append(f"memory: {actor} ({model}): gpu_memory_utilization {utilization} of a {where['gpu']} "
                        f"leaves {kv:.1f} GiB for the KV cache after {weights:.1f} GiB of weights; one "
                        f"{max_model_len}-token sequence needs {max_model_len * kv_token / GIB:.1f} GiB")
    return entry


def transformers_generator_entry(cfg: S3Config, where: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A generator replica running transformers on a GPU: bf16 weights, KV cache of one batch."""
    from s3_ray.models.shapes import ShapeError, decoder_params, kv_bytes_per_token, model_shape

    g = cfg.generator
    try:
        shape = model_shape(g.model)
    except ShapeError as err:
        problems.append(f"memory: generator replica: {err}")
        return {**_cpu_entry("generator replica", cfg.serve.generator_replicas, str(err)), "gpu": where["gpu"]}
    tokens = g.batch_size * (g.max_context_tokens + g.max_new_tokens)
    act = tokens * (2 * shape["hidden_size"] + 2 * shape["intermediate_size"]) * 2  # one layer's bf16 tensors
    return _entry("generator replica", cfg.serve.generator_replicas, where, {
        "weights": decoder_params(shape) * 2 / GIB, "kv_cache": tokens * kv_bytes_per_token(shape) / GIB,
        "activations": act / GIB, "logits": g.batch_size * shape["vocab_size"] * 4 / GIB,
        "cuda_context": CUDA_CONTEXT_GIB}, backend="transformers")


def index_vectors(cfg: S3Config) -> tuple[int | None, int | None]:
    """(passages, embedding dim) of the index: its manifest, else `resources.corpus_passages`, a known
    corpus by file name or the corpus file's lines; the dim from the manifest or the encoder."""
    from s3_ray.models.shapes import KNOWN_ENCODERS

    r = cfg.retrieval
    n: int | None = cfg.resources.corpus_passages
    dim: int | None = None
    manifest = Path(r.index_dir) / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        n, dim = n or data.get("n_passages"), data.get("dim")
    corpus = cfg.data.corpus_path
    if n is None and corpus:
        n = KNOWN_CORPORA.get(Path(corpus).stem)
        if n is None and Path(corpus).is_file() and Path(corpus).stat().st_size < 2 * GIB:
            with open(corpus, "rb") as fh:
                n = sum(1 for _ in fh)
    if dim is None:
        dim = KNOWN_ENCODERS.get(r.encoder, (None, 0))[0]
        config = Path(r.encoder).expanduser() / "config.json"
        if dim is None and config.is_file():
            dim = json.loads(config.read_text()).get("hidden_size")
    return n, dim


def faiss_gpu_float16(cfg: S3Config) -> bool:
    """Whether a GPU clone of a flat index holds fp16 vectors (`retrieval.faiss_gpu_fp16`, which
    `s3_ray.retrieval.dense` hands to faiss's `GpuClonerOptions.useFloat16`)."""
    return bool(cfg.retrieval.faiss_gpu_fp16)


def retriever_entries(cfg: S3Config, problems: list[str]) -> list[dict[str, Any]]:
    """A retriever replica (its faiss index on the GPU when it goes there) and its query encoder."""
    from s3_ray.models.shapes import KNOWN_ENCODERS

    r, s = cfg.retrieval, cfg.serve
    count = s.retriever_replicas * r.replica_shards
    if r.backend == "bm25" or s.retriever_gpus <= 0:
        return [_cpu_entry("retriever replica", count, "serve.retriever_gpus is 0 (or BM25): host memory")]
    where = gpu_for(cfg, "serve", problems)
    if where["gpu_memory_gib"] is not None:
        where = {**where, "gpu_memory_gib": round(where["gpu_memory_gib"] * min(s.retriever_gpus, 1.0), 2)}
    refined = r.index_type == "ivfpq" and r.pq_refine != "none"  # refine runs in host memory only
    on_gpu = r.faiss_gpu is not False and r.index_type != "hnsw" and not refined
    n, dim = index_vectors(cfg)
    index = temp = 0.0
    if on_gpu:
        if n is None or dim is None:
            problems.append("memory: retriever replica: cannot tell the index size before it is built; set "
                            "resources.corpus_passages")
        else:
            # a replica with several GPUs splits its shard over them (faiss `shard=True`), one part each
            rows = n / r.replica_shards / max(1, int(s.retriever_gpus))
            if r.index_type == "flat":
                index = rows * dim * (2 if faiss_gpu_float16(cfg) else 4)
            else:
                index = rows * (r.pq_m * r.pq_nbits / 8 + 8) + r.ivf_nlist * dim * 4
            temp = FAISS_TEMP_GIB
    retriever = _entry("retriever replica", count, where, {"index": index / GIB, "activations": temp,
                                                           "cuda_context": CUDA_CONTEXT_GIB},
                       index_type=r.index_type, vectors=int(n / r.replica_shards) if n else None,
                       index_dtype="fp16" if faiss_gpu_float16(cfg) else "fp32", faiss_on_gpu=on_gpu)
    params = KNOWN_ENCODERS.get(r.encoder, (None, 110_000_000))[1]
    hidden = dim or 768
    act = r.max_batch * r.max_length * hidden * 4 * 4  # a few fp32 (batch, length, hidden) tensors at a time
    encoder = _entry("encoder", count, where, {"weights": params * 4 / GIB, "activations": act / GIB},
                     model=r.encoder, shares_gpu_with="retriever replica")
    return [retriever, encoder]


def generator_entries(cfg: S3Config, problems: list[str]) -> list[dict[str, Any]]:
    g, s = cfg.generator, cfg.serve
    if g.backend == "openai":
        return [{**_cpu_entry("generator replica", s.generator_replicas, f"an OpenAI-compatible server at "
                              f"{g.base_url}: outside this plan"), "gpu": "external"}]
    from s3_ray.serving.deployment import generator_replica_gpus

    if generator_replica_gpus(g, s) <= 0:
        return [_cpu_entry("generator replica", s.generator_replicas, "serve.generator_gpus is 0: runs on CPU")]
    where = gpu_for(cfg, "serve", problems)
    if g.backend == "vllm":
        tp = g.tensor_parallel_size
        return [vllm_entry("generator replica", s.generator_replicas, where, g.model, g.gpu_memory_utilization, tp,
                           g.max_context_tokens + g.max_new_tokens, problems, backend="vllm")]
    return [transformers_generator_entry(cfg, where, problems)]


# ------------------------------------------------------------------ the plan
TRANSIENT = ("activations", "logits")
"""Parts an actor holds only while it computes (a train worker's update); the rest stay resident."""


def group_need(group: list[dict[str, Any]]) -> float:
    """GiB one GPU needs for the actors sharing it. A vLLM engine that sleeps during the update
    (`searcher.vllm_sleep_level` 1 or 2: KV cache dropped, weights offloaded or dropped) is never
    awake beside an update: the GPU needs the larger of rollout time (the engine's reservation
    beside what the others keep resident) and update time (everyone else at their peak).

    >>> train = {"peak_gib": 30.0, "parts": {"weights": 4.0, "optimizer_state": 8.0, "activations": 18.0}}
    >>> engine = {"peak_gib": 20.0, "parts": {"weights": 15.0, "kv_cache": 5.0}, "sleeps_during_update": True}
    >>> group_need([train, engine]), group_need([train, {**engine, "sleeps_during_update": False}])
    (32.0, 50.0)
    """
    sleepers = [e for e in group if e.get("sleeps_during_update")]
    if not sleepers:
        return sum(e["peak_gib"] for e in group)
    awake = [e for e in group if not e.get("sleeps_during_update")]
    resident = sum(e["peak_gib"] - sum(e.get("parts", {}).get(k, 0.0) for k in TRANSIENT) for e in awake)
    return max(resident + sum(e["peak_gib"] for e in sleepers), sum(e["peak_gib"] for e in awake))


def check_fit(entries: list[dict[str, Any]], problems: list[str]) -> None:
    """A problem for every GPU whose actors (an actor plus those that share its GPU) need more than it has."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("peak_gib") is not None and e.get("gpu_memory_gib") is not None:
            groups.setdefault(e.get("shares_gpu_with") or e["actor"], []).append(e)
    for owner, group in groups.items():
        need = round(group_need(group), 2)
        have = group[0]["gpu_memory_gib"]
        fits = need <= have
        for e in group:
            e["fits"] = fits
        if not fits:
            names = " + ".join(f"{e['actor']} {e['peak_gib']}" for e in group)
            problems.append(f"memory: {owner} does not fit its GPU: {names} = {need} GiB on a {group[0]['gpu']} "
                            f"({have} GiB per actor set); `--dry-run` shows plan.memory")


def add_memory_plan(plan: Plan, cfg: S3Config, train: bool = False, retriever: bool = True,
                    generator: bool = True) -> list[dict[str, Any]]:
    """Fill `plan.memory` with the actors the job starts and name what does not fit in `plan.problems`."""
    entries: list[dict[str, Any]] = []
    if train:
        entries += train_entries(cfg, plan.problems)
    if retriever:
        entries += retriever_entries(cfg, plan.problems)
    if generator:
        entries += generator_entries(cfg, plan.problems)
    check_fit(entries, plan.problems)
    return plan.add("memory", entries)


def memory_table(entries: list[dict[str, Any]]) -> str:
    """`plan.memory` as a Markdown table (GiB)."""
    head = ["actor", "x", "GPU", "GPU GiB", "peak", *PARTS, "fits"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        parts = e.get("parts") or {}
        rows.append("| " + " | ".join(str(v) for v in [
            e["actor"], e["count"], e["gpu"], e["gpu_memory_gib"] if e["gpu_memory_gib"] is not None else "-",
            e["peak_gib"] if e["peak_gib"] is not None else "-", *[parts.get(p, "-") for p in PARTS],
            {True: "yes", False: "**no**"}.get(e.get("fits"), "-")]) + " |")
    return "\n".join(rows)
