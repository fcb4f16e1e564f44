"""Retrieval benchmark: one run, numbers reported as ratios where a comparison is meant.

    python benchmarks/retrieval/retrieval_bench.py [--quick] [--out benchmarks/results/retrieval.json]

Measures, on whatever machine runs it:
1. BM25 (bm25s) in-process vs through a Ray Serve handle vs HTTP, on the embedded corpus and on
   100k passages (the embedded corpus repeated): queries/s at batch 1 and batch 64 with one call at
   a time, and at batch 64 with 4 requests in flight (a loaded server); p50/p99 latency with 32
   concurrent HTTP clients on the 100k index;
2. bm25s vs rank-bm25 (`pip install -e .[bench]`; benchmark only) queries/s on the same corpus;
3. BM25 index build time and memory per 100k passages (the embedded corpus repeated);
4. faiss Flat vs HNSW vs IVF-PQ on 100k synthetic 384-dim unit vectors with cluster structure
   (random, not encoded text: encoding 100k passages with MiniLM on a small CPU takes ~1 h):
   build time, index bytes, queries/s and recall@10 relative to Flat;
5. `compressed`: IVF-PQ with refine against flat, and `replica_shards`: the sharded retriever app
   (benchmarks/retrieval/retrieval_scale.py has what they measure).
Prints a table and writes everything to JSON. `--only compressed,replica_shards` runs those
sections and keeps the others' figures from the existing JSON. The 1-minute load average is
recorded at the start and end; above 1.0 at the start the run writes nothing unless given
`--allow-busy` (then the result says `"busy": true`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil

from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import read_corpus, write_corpus
from s3_ray.data.embedded import embedded_dir
from s3_ray.data.qa import read_qa
from s3_ray.retrieval import BM25Retriever, build_index
from s3_ray.types import Passage

SECTIONS = ("bm25_impls", "bm25_build", "faiss", "serve", "compressed", "replica_shards")


def rate(fn: Callable[[], Any], n_queries: int, min_s: float = 2.0) -> float:
    """Queries/s of `fn` (which answers n_queries), repeated for at least `min_s` seconds."""
    fn()  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_s or count == 0:
        fn()
        count += 1
    return count * n_queries / elapsed


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def bench_bm25_impls(passages: list[Passage], queries: list[str], min_s: float) -> dict[str, Any]:
    from rank_bm25 import BM25Okapi

    ours = BM25Retriever.build(passages)
    rb = BM25Okapi([p.contents.lower().split() for p in passages], k1=0.9, b=0.4)
    few = queries[:20]
    ours_qps = rate(lambda: ours.search(queries[:64], 10), 64, min_s)
    rb_qps = rate(lambda: [rb.get_top_n(q.lower().split(), passages, n=10) for q in few], len(few), min_s)
    return {"passages": len(passages), "bm25s_qps_batch64": ours_qps, "rank_bm25_qps": rb_qps,
            "bm25s_over_rank_bm25": ours_qps / rb_qps}


def bench_bm25_build(passages: list[Passage], target: int) -> dict[str, Any]:
    reps = -(-target // len(passages))
    big = [Passage(f"{p.id}-{r}", p.contents) for r in range(reps) for p in passages][:target]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, big)
        m = build_index(corpus, RetrievalConfig(index_dir=f"{tmp}/index"), progress=False)
        tracemalloc.start()  # a second, traced build of a 20k slice: peak Python+numpy memory
        BM25Retriever.build(big[:20_000])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    scale = 100_000 / len(big)
    return {"passages": len(big), "build_s_per_100k": m.build_seconds * scale,
            "index_mb_per_100k": m.index_bytes / 2**20 * scale, "peak_build_mb_per_100k": peak / 2**20 * 5}


def clustered_unit_vectors(n: int, dim: int, centers: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # queries: corpus points moved by noise of norm ~0.5 (the vectors have norm 1)
    q = x[rng.integers(0, n, 1000)] + (0.5 / np.sqrt(dim)) * rng.standard_normal((1000, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def bench_faiss(n: int, min_s: float) -> dict[str, Any]:
    import faiss

    from s3_ray.retrieval.dense import FaissParams, build_faiss_index, set_search_params

    x, q = clustered_unit_vectors(n, 384, 1000, np.random.default_rng(0))
    out: dict[str, Any] = {"vectors": n, "dim": 384, "queries": len(q), "threads": faiss.omp_get_max_threads()}
    truth = None
    for name, params in [("flat", FaissParams("flat")), ("hnsw", FaissParams("hnsw", hnsw_m=32, hnsw_ef_construction=80)),
                         ("ivfpq", FaissParams("ivfpq", ivf_nlist=1024, pq_m=48, pq_nbits=8))]:
        before, start = rss_mb(), time.perf_counter()
        index = build_faiss_index(x, params)
        build_s = time.perf_counter() - start
        set_search_params(index, ef_search=64, nprobe=16)
        _, ids = index.search(q, 10)
        if truth is None:
            truth = ids
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))
        qps = rate(lambda: index.search(q[:64], 10), 64, min_s)
        out[name] = {"build_s": build_s, "index_mb": faiss.serialize_index(index).nbytes / 2**20,
                     "rss_growth_mb": rss_mb() - before, "qps_batch64": qps,
                     "qps_batch1": rate(lambda: index.search(q[:1], 10), 1, min_s / 2), "recall_at_10_vs_flat": recall}
        del index
    out["hnsw_over_flat_qps"] = out["hnsw"]["qps_batch64"] / out["flat"]["qps_batch64"]
    out["ivfpq_over_flat_qps"] = out["ivfpq"]["qps_batch64"] / out["flat"]["qps_batch64"]
    return out


async def _http_concurrent(url: str, queries: list[str], clients: int, per_client: int) -> dict[str, Any]:
    import httpx

    lat: list[float] = []

    async def worker(c: int, http: httpx.AsyncClient) -> None:
        for i in range(per_client):
            t = time.perf_counter()
            r = await http.post(url, json={"queries": [queries[(c * per_client + i) % len(queries)]], "topk": 3})
            r.raise_for_status()
            lat.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        deadline = time.perf_counter() + 30  # a just-redeployed route may 404 until the proxy updates
        while (await http.post(url, json={"queries": ["warm up"], "topk": 3})).status_code != 200:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{url} did not answer 200 within 30 s")
            await asyncio.sleep(0.2)
        start = time.perf_counter()
        await asyncio.gather(*[worker(c, http) for c in range(clients)])
        wall = time.perf_counter() - start
    lat.sort()
    return {"clients": clients, "requests": len(lat), "qps": len(lat) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def _repeat_corpus(passages: list[Passage], target: int, path: Path) -> Path:
    reps = -(-target // len(passages))
    write_corpus(path, [Passage(f"{p.id}-{r}", p.contents) for r in range(reps) for p in passages][:target])
    return path


def _pipelined(submit: Callable[[], Any], wait: Callable[[Any], Any], n_queries: int, in_flight: int,
               min_s: float) -> float:
    """Queries/s with `in_flight` requests outstanding at all times (how a loaded server is used)."""
    wait(submit())  # warm-up
    pending = [submit() for _ in range(in_flight)]
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_s or done == 0:
        wait(pending.pop(0))
        done += 1
        pending.append(submit())
    for p in pending:
        wait(p)
    return done * n_queries / elapsed


def bench_serve_corpus(corpus: Path, queries: list[str], min_s: float, port: int, in_flight: int,
                       keep: bool = False) -> dict[str, Any]:
    """In-process vs Serve handle vs HTTP on one index: serial calls at batch 1 and 64, and batch 64
    with `in_flight` requests outstanding (the replica searches while the next request is in transit)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from ray import serve

    from deployments.retriever import RetrieverAppArgs, build_app

    tmp = tempfile.mkdtemp(prefix="retrieval-bench-")
    cfg = RetrievalConfig(index_dir=f"{tmp}/index")
    build_index(corpus, cfg, progress=False)
    local = BM25Retriever.load(cfg.index_dir)
    handle = serve.run(build_app(RetrieverAppArgs(retrieval=cfg, retriever_cpus=0.5)), name="retriever",
                       route_prefix="/")
    url = f"http://127.0.0.1:{port}/retrieve"
    res: dict[str, Any] = {"passages": len(local)}
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(in_flight) as pool:
        def post(qs: list[str]) -> None:
            http.post(url, json={"queries": qs, "topk": 3}).raise_for_status()

        deadline = time.perf_counter() + 30  # a just-deployed route may 404 until the proxy updates
        while http.post(url, json={"queries": ["warm up"], "topk": 3}).status_code != 200:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{url} did not answer 200 within 30 s")
            time.sleep(0.2)
        for b in (1, 64):
            qs = queries[:b]
            res[f"inprocess_qps_b{b}"] = rate(lambda: local.search(qs, 3), b, min_s)
            res[f"handle_qps_b{b}"] = rate(lambda: handle.search.remote(qs, 3).result(), b, min_s)
            res[f"http_qps_b{b}"] = rate(lambda: post(qs), b, min_s)
            res[f"handle_over_inprocess_b{b}"] = res[f"handle_qps_b{b}"] / res[f"inprocess_qps_b{b}"]
            res[f"http_over_inprocess_b{b}"] = res[f"http_qps_b{b}"] / res[f"inprocess_qps_b{b}"]
        qs = queries[:64]
        res["in_flight"] = in_flight
        res["handle_qps_b64_pipelined"] = _pipelined(lambda: handle.search.remote(qs, 3), lambda r: r.result(),
                                                     64, in_flight, min_s)
        res["http_qps_b64_pipelined"] = _pipelined(lambda: pool.submit(post, qs), lambda f: f.result(),
                                                   64, in_flight, min_s)
        res["handle_pipelined_over_inprocess_b64"] = res["handle_qps_b64_pipelined"] / res["inprocess_qps_b64"]
        res["http_pipelined_over_inprocess_b64"] = res["http_qps_b64_pipelined"] / res["inprocess_qps_b64"]
    if not keep:
        serve.delete("retriever")
    return res


PORT = 8765


def start_serve() -> None:
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token side effect for later CLI use
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})


def bench_serve(corpora: dict[str, Path], queries: list[str], min_s: float, per_client: int,
                in_flight: int = 4) -> dict[str, Any]:
    from ray import serve

    port = PORT
    res: dict[str, Any] = {}
    labels = list(corpora)
    for label in labels:
        res[label] = bench_serve_corpus(corpora[label], queries, min_s, port, in_flight, keep=label == labels[-1])
    # latency under concurrency, on the last (largest) index, still deployed
    res["http_32_clients"] = asyncio.run(_http_concurrent(f"http://127.0.0.1:{port}/retrieve", queries, 32,
                                                          per_client))
    res["http_32_clients"]["passages"] = res[labels[-1]]["passages"]
    serve.delete("retriever")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/retrieval.json")
    ap.add_argument("--quick", action="store_true", help="10k vectors, short timings (a smoke run)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--allow-busy", action="store_true", help="write the result even if the machine was busy")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if unknown := sorted(set(only) - set(SECTIONS)):
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    load_start = os.getloadavg()
    busy = load_start[0] > 1.0
    if busy and not args.allow_busy:
        print(f"1-minute load average is {load_start[0]:.2f} (> 1.0): the machine is busy, nothing measured; "
              "rerun when it is idle, or pass --allow-busy to write a result marked busy")
        return 3
    min_s = 0.5 if args.quick else 2.0
    corpus_path = embedded_dir() / "corpus.jsonl"
    passages = read_corpus(corpus_path)
    queries = [item.question for item in read_qa(embedded_dir() / "test.jsonl")]
    queries = (queries * (64 // len(queries) + 1))[:max(64, len(queries))]
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() and set(only) != set(SECTIONS) else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()}
    t0 = time.perf_counter()
    n_vec = 10_000 if args.quick else 100_000
    if "bm25_impls" in only:
        results["bm25_impls"] = bench_bm25_impls(passages, queries, min_s)
    if "bm25_build" in only:
        results["bm25_build"] = bench_bm25_build(passages, n_vec)
    if "faiss" in only:
        results["faiss"] = bench_faiss(n_vec, min_s)
    if "compressed" in only:
        from retrieval_scale import bench_compressed

        results["compressed"] = bench_compressed(n_vec, min_s, clustered_unit_vectors,
                                                 results.get("faiss", {}).get("hnsw"))
    if "serve" in only or "replica_shards" in only:
        import ray

        big = _repeat_corpus(passages, n_vec, Path(tempfile.mkdtemp(prefix="retrieval-bench-")) / "corpus.jsonl")
        start_serve()
        try:
            if "serve" in only:
                results["serve"] = bench_serve({"embedded": corpus_path, "repeated": big}, queries, min_s,
                                               5 if args.quick else 20)
            if "replica_shards" in only:
                from retrieval_scale import bench_replica_shards

                results["replica_shards"] = bench_replica_shards(corpus_path, big, queries, min_s)
        finally:
            ray.shutdown()
    load_end = os.getloadavg()
    run = {"sections": only, "total_s": time.perf_counter() - t0, "busy": busy,
           "load_avg_start": list(load_start), "load_avg_end": list(load_end)}
    for section in only:
        results[section]["load_avg"] = {"start": list(load_start), "end": list(load_end), "busy": busy}
    results["last_run"] = run
    results["total_s"] = run["total_s"] if set(only) == set(SECTIONS) else results.get("total_s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nwritten to {out}")
    return 0


def render(r: dict[str, Any]) -> str:
    from retrieval_scale import render_scale

    s, f, bi, bb = r["serve"], r["faiss"], r["bm25_impls"], r["bm25_build"]
    c = s["http_32_clients"]
    rows = []
    for label in ("embedded", "repeated"):
        x = s[label]
        n = f"{x['passages'] // 1000}k" if x["passages"] >= 10_000 else str(x["passages"])
        rows += [
            (f"BM25 {n} passages: in-process q/s, batch 1 / 64", f"{x['inprocess_qps_b1']:.0f} / {x['inprocess_qps_b64']:.0f}"),
            ("  Serve handle q/s, batch 1 / 64 / 64 pipelined",
             f"{x['handle_qps_b1']:.0f} / {x['handle_qps_b64']:.0f} / {x['handle_qps_b64_pipelined']:.0f}"),
            ("  HTTP q/s, batch 1 / 64 / 64 pipelined",
             f"{x['http_qps_b1']:.0f} / {x['http_qps_b64']:.0f} / {x['http_qps_b64_pipelined']:.0f}"),
            ("  ratio handle / in-process: b1, b64, b64 pipelined",
             f"{x['handle_over_inprocess_b1']:.3f}, {x['handle_over_inprocess_b64']:.2f}, "
             f"{x['handle_pipelined_over_inprocess_b64']:.2f}"),
            ("  ratio HTTP / in-process: b1, b64, b64 pipelined",
             f"{x['http_over_inprocess_b1']:.3f}, {x['http_over_inprocess_b64']:.2f}, "
             f"{x['http_pipelined_over_inprocess_b64']:.2f}"),
        ]
    rows += [
        (f"HTTP, {c['clients']} concurrent clients ({c['passages'] // 1000}k passages): q/s, p50, p99",
         f"{c['qps']:.0f} q/s, {c['p50_ms']:.1f} ms, {c['p99_ms']:.1f} ms"),
        (f"bm25s / rank-bm25 q/s ({bi['passages']} passages)",
         f"{bi['bm25s_qps_batch64']:.0f} / {bi['rank_bm25_qps']:.1f} = {bi['bm25s_over_rank_bm25']:.0f}x"),
        ("BM25 build per 100k passages: time, index size, peak memory",
         f"{bb['build_s_per_100k']:.1f} s, {bb['index_mb_per_100k']:.0f} MiB, {bb['peak_build_mb_per_100k']:.0f} MiB"),
    ]
    for name in ("flat", "hnsw", "ivfpq"):
        x = f[name]
        rows.append((f"faiss {name} ({f['vectors'] // 1000}k x {f['dim']}): build, size, RSS, q/s b64 / b1, recall@10",
                     f"{x['build_s']:.1f} s, {x['index_mb']:.0f} MiB, {x['rss_growth_mb']:.0f} MiB, "
                     f"{x['qps_batch64']:.0f} / {x['qps_batch1']:.0f}, "
                     f"{x['recall_at_10_vs_flat']:.3f}"))
    rows.append(("  ratio HNSW / Flat, IVF-PQ / Flat q/s (batch 64)",
                 f"{f['hnsw_over_flat_qps']:.1f}x, {f['ivfpq_over_flat_qps']:.1f}x"))
    rows += render_scale(r)
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"| {a:<{width}} | {b} |" for a, b in rows)


if __name__ == "__main__":
    raise SystemExit(main())
