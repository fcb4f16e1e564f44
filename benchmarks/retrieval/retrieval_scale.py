"""The retrieval benchmark's scale sections (`retrieval_bench.py --only compressed,replica_shards`).

* `compressed`: flat fp32 / flat fp16 / HNSW / IVF-PQ / IVF-PQ + refine (sq8, fp16, mmap = exact fp32
  vectors memory-mapped) on 100k x 384 unit vectors of two kinds: `clustered` (the `faiss`
  section's data: 1,000 centres plus isotropic noise, hard for PQ) and `spectral` (the same
  clusters in a space whose variance decays like a power law over a random rotation, the shape of
  text-embedding spectra). Queries/s at batch 64, recall@10 against flat, resident memory of the
  loaded index (anonymous; file-backed pages of the memory map reported apart: the kernel can drop
  them), bytes per passage, and the best setting meeting the goal.
* `replica_shards`: the sharded retriever app at N = 1 (the unsharded app), 2 and 4 on one machine:
  queries/s through the handle at batch 64, each replica's resident memory, and whether BM25 and
  flat results equal the unsharded index's (scores included; `same_results`).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

GOAL = {"recall": 0.95, "qps_over_flat": 10.0, "memory_over_flat": 1 / 3}
REFINE_SETTINGS = [(16, 2), (16, 4), (32, 4), (32, 8), (64, 8)]  # (nprobe, k_factor)


def rate(fn: Callable[[], Any], n_queries: int, min_s: float) -> float:
    fn()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_s or count == 0:
        fn()
        count += 1
    return count * n_queries / elapsed


def rss_parts() -> tuple[float, float]:
    """(anonymous, file-backed) resident MiB of this process, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("RssAnon", 0.0), fields.get("RssFile", 0.0) + fields.get("RssShmem", 0.0)


def spectral_unit_vectors(n: int, dim: int, centers: int, rng: np.random.Generator,
                          decay: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    scale = (np.arange(1, dim + 1, dtype=np.float32) ** -decay)
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    c = rng.standard_normal((centers, dim)).astype(np.float32) * scale
    x = (c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32) * scale) @ rot
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[rng.integers(0, n, 1000)] + (0.1 * rng.standard_normal((1000, dim)).astype(np.float32) * scale) @ rot
    return x, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def measure_loaded(path: str, mmap: bool, nprobe: int | None, k_factor: int | None, q: np.ndarray,
                   truth: np.ndarray, min_s: float) -> dict[str, Any]:
    """Open one index file, search: recall@10, queries/s at batch 64, and the resident memory the
    open index holds (run in a fresh process, so no memory of an earlier index is reused)."""
    import faiss

    from s3_ray.retrieval.dense import set_search_params

    gc.collect()
    a0, f0 = rss_parts()
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    if nprobe is not None:
        set_search_params(index, 64, nprobe, k_factor or 1)
    _, ids = index.search(q, 10)
    qps = rate(lambda: index.search(q[:64], 10), 64, min_s)
    a1, f1 = rss_parts()
    return {"nprobe": nprobe, "k_factor": k_factor, "qps_batch64": qps,
            "recall_at_10_vs_flat": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])),
            "rss_anon_mb": a1 - a0, "rss_file_mb": f1 - f0}


def _rows(path: str, mmap: bool, q_path: str, truth_path: str, settings, min_s: float) -> list[dict[str, Any]]:
    rows = []
    for nprobe, k_factor in settings:
        cmd = [sys.executable, __file__, "--measure", path, str(int(mmap)), str(nprobe), str(k_factor), q_path,
               truth_path, str(min_s)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def bench_compressed_data(x: np.ndarray, q: np.ndarray, min_s: float, tmp: Path) -> dict[str, Any]:
    import faiss

    from s3_ray.retrieval.dense import FaissParams, build_faiss_index

    n, dim = x.shape
    flat = build_faiss_index(x, FaissParams("flat"))
    truth = flat.search(q, 10)[1]
    del flat
    q_path, truth_path = str(tmp / "queries.npy"), str(tmp / "truth.npy")
    np.save(q_path, q)
    np.save(truth_path, truth)
    out: dict[str, Any] = {}

    def fp16() -> Any:
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        index.add(x)
        return index

    base = dict(index_type="ivfpq", ivf_nlist=1024, pq_m=48, pq_nbits=8)
    plan: list[tuple[str, Callable[[], Any], bool, Any]] = [
        ("flat", lambda: build_faiss_index(x, FaissParams("flat")), False, [(None, None)]),
        ("flat_fp16", fp16, False, [(None, None)]),
        ("ivfpq", lambda: build_faiss_index(x, FaissParams(**base)), False, [(16, None), (64, None)]),
    ] + [(f"ivfpq_refine_{kind}", (lambda kind=kind: build_faiss_index(x, FaissParams(**base, refine=kind))),
          kind == "mmap", REFINE_SETTINGS) for kind in ("sq8", "fp16", "mmap")]
    for name, build, mmap, settings in plan:
        start = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - start
        path = str(tmp / f"{name}.faiss")
        faiss.write_index(index, path)
        del index
        size = os.path.getsize(path)
        mapped = n * dim * 4 if mmap else 0  # the exact vectors, memory-mapped, not read
        out[name] = {"build_s": build_s, "file_mb": size / 2**20, "bytes_per_passage": (size - mapped) / n,
                     "mapped_bytes_per_passage": mapped / n, "settings": _rows(path, mmap, q_path, truth_path, settings, min_s)}
        os.remove(path)
    return out


def _summary(data: dict[str, Any], hnsw: dict[str, Any] | None, n: int) -> dict[str, Any]:
    flat = data["flat"]["settings"][0]
    flat_mem = flat["rss_anon_mb"]
    best = None
    for name in ("ivfpq_refine_sq8", "ivfpq_refine_fp16", "ivfpq_refine_mmap"):
        for row in data[name]["settings"]:
            row["qps_over_flat"] = row["qps_batch64"] / flat["qps_batch64"]
            row["memory_over_flat"] = row["rss_anon_mb"] / flat_mem
            row["meets_goal"] = (row["recall_at_10_vs_flat"] >= GOAL["recall"] and row["qps_over_flat"] >= GOAL[
                "qps_over_flat"] and row["memory_over_flat"] <= GOAL["memory_over_flat"])
            if row["meets_goal"] and (best is None or row["qps_batch64"] > best[1]["qps_batch64"]):
                best = (name, row)
    plain = max(data["ivfpq"]["settings"], key=lambda r: r["recall_at_10_vs_flat"])
    bpp = {"flat_fp32": data["flat"]["bytes_per_passage"], "flat_fp16": data["flat_fp16"]["bytes_per_passage"],
           "ivfpq": data["ivfpq"]["bytes_per_passage"],
           "ivfpq_refine_sq8": data["ivfpq_refine_sq8"]["bytes_per_passage"],
           "ivfpq_refine_fp16": data["ivfpq_refine_fp16"]["bytes_per_passage"],
           "ivfpq_refine_mmap": data["ivfpq_refine_mmap"]["bytes_per_passage"],
           "ivfpq_refine_mmap_mapped": data["ivfpq_refine_mmap"]["mapped_bytes_per_passage"]}
    if hnsw is not None:
        bpp["hnsw"] = hnsw["index_mb"] * 2**20 / n
    s: dict[str, Any] = {"bytes_per_passage": bpp, "ivfpq_best_recall_at_10": plain["recall_at_10_vs_flat"]}
    if best is not None:
        name, row = best
        s.update(goal_met=True, index=name, nprobe=row["nprobe"], k_factor=row["k_factor"],
                 recall_at_10_vs_flat=row["recall_at_10_vs_flat"], qps_over_flat=row["qps_over_flat"],
                 memory_over_flat=row["memory_over_flat"])
    else:
        s["goal_met"] = False
    return s


def bench_compressed(n: int, min_s: float, clustered: Callable[..., tuple[np.ndarray, np.ndarray]],
                     hnsw: dict[str, Any] | None) -> dict[str, Any]:
    """Both data kinds; `clustered` is the faiss section's generator, `hnsw` its HNSW row (for bytes)."""
    out: dict[str, Any] = {"vectors": n, "dim": 384, "queries": 1000, "goal": GOAL}
    with tempfile.TemporaryDirectory(prefix="retrieval-compressed-") as tmp:
        for kind in ("spectral", "clustered"):
            rng = np.random.default_rng(0)
            x, q = (spectral_unit_vectors(n, 384, 1000, rng) if kind == "spectral"
                    else clustered(n, 384, 1000, rng))
            data = bench_compressed_data(x, q, min_s, Path(tmp))
            out[kind] = {"indexes": data, "summary": _summary(data, hnsw, n)}
            del x, q
    best = out["spectral"]["summary"]
    out.update({k: best.get(k) for k in ("recall_at_10_vs_flat", "qps_over_flat", "memory_over_flat")})
    out["bytes_per_passage"] = best["bytes_per_passage"]
    out["data_of_headline"] = "spectral"
    return out



class HashEncoder:
    """A deterministic bag-of-words encoder (every word a fixed random vector): flat search over its
    vectors is exact, which is all the sharded-equals-unsharded check needs."""

    dim = 64

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i] += np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim)
            out[i] /= np.linalg.norm(out[i]) or 1.0
        out[np.linalg.norm(out, axis=1) == 0, 0] = 1.0
        return out

    encode_queries = encode_passages = _encode


def _identical(corpus: Path, queries: list[str], tmp: Path) -> dict[str, Any]:
    """Sharded (N = 2, 4) against unsharded, in process, at k = 1, 10, 50, for BM25 and flat."""
    from s3_ray.config import RetrievalConfig
    from s3_ray.retrieval import build_index, load_retriever
    from s3_ray.retrieval.shard_merge import same_results

    out: dict[str, Any] = {}
    enc = HashEncoder()
    for backend, label in (("bm25", "identical_bm25"), ("dense", "identical_flat")):
        kw = {"backend": backend, "encoder": "hash-bench"}
        whole = RetrievalConfig(index_dir=str(tmp / f"{backend}-1"), **kw)
        build_index(corpus, whole, progress=False, encoder=enc)
        ref = load_retriever(whole, encoder=enc)
        ok = True
        for n in (2, 4):
            cut = RetrievalConfig(index_dir=str(tmp / f"{backend}-{n}"), replica_shards=n, **kw)
            build_index(corpus, cut, progress=False, encoder=enc)
            many = load_retriever(cut, encoder=enc)
            ok &= all(same_results(ref.search(queries, k), many.search(queries, k)) for k in (1, 10, 50))
        out[label] = bool(ok)
    return out


def _replica_rss() -> dict[str, float]:
    """Resident MiB of every retriever Serve replica process, by deployment name."""
    import psutil

    found: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica:retriever:" in title:
            name = title.split("ServeReplica:retriever:")[1].split()[0]
            found[name] = proc.info["memory_info"].rss / 2**20
    return found


def bench_replica_shards(small_corpus: Path, big_corpus: Path, queries: list[str], min_s: float) -> dict[str, Any]:
    """Identity in process on the small corpus; Serve queries/s and replica memory on the big one."""
    from ray import serve

    from deployments.retriever import RetrieverAppArgs, build_app
    from s3_ray.config import RetrievalConfig
    from s3_ray.retrieval import build_index, load_retriever
    from s3_ray.retrieval.shard_merge import same_results

    out: dict[str, Any] = {"identity_corpus": str(small_corpus.name), "identity_queries": len(queries)}
    with tempfile.TemporaryDirectory(prefix="retrieval-shards-") as tmp:
        out.update(_identical(small_corpus, queries, Path(tmp)))
        qs = (queries * 64)[:64]
        ref = None
        serve_rows: dict[str, Any] = {}
        for n in (1, 2, 4):
            cfg = RetrievalConfig(index_dir=f"{tmp}/big-{n}", replica_shards=n)
            build_index(big_corpus, cfg, progress=False)
            if ref is None:
                ref = load_retriever(cfg).search(qs, 10)
            handle = serve.run(build_app(RetrieverAppArgs(retrieval=cfg, retriever_cpus=0.25)), name="retriever",
                               route_prefix="/")
            same = same_results(handle.search.remote(qs, 10).result(timeout_s=120), ref)
            qps = rate(lambda: handle.search.remote(qs, 10).result(timeout_s=120), 64, min_s)
            rss = _replica_rss()
            shard_rss = [v for k, v in rss.items() if "Shard" in k]
            serve_rows[f"n{n}"] = {"qps_batch64": qps, "same_as_unsharded": same, "replica_rss_mb": rss,
                                   "rss_per_shard_mb": (sum(shard_rss) / len(shard_rss)) if shard_rss else
                                   rss.get("RetrieverDeployment")}
            serve.delete("retriever")
    out["serve"] = serve_rows
    r1, r2, r4 = (serve_rows[f"n{n}"]["rss_per_shard_mb"] for n in (1, 2, 4))
    out["qps_n2_over_n1"] = serve_rows["n2"]["qps_batch64"] / serve_rows["n1"]["qps_batch64"]
    out["qps_n4_over_n1"] = serve_rows["n4"]["qps_batch64"] / serve_rows["n1"]["qps_batch64"]
    if None not in (r1, r2, r4):
        out["rss_per_shard_over_unsharded"] = {"n2": r2 / r1, "n4": r4 / r1}
        out["rss_fixed_part_mb"] = 2 * r4 - r2  # rss(N) = fixed + index / N, from N = 2 and 4
        out["rss_index_part_mb_unsharded"] = 4 * (r2 - r4)
    out["serve_same_as_unsharded"] = all(r["same_as_unsharded"] for r in serve_rows.values())
    out["passages"] = sum(1 for _ in open(big_corpus, encoding="utf-8"))
    return out



def render_scale(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows of the `compressed` and `replica_shards` sections (those present)."""
    rows: list[tuple[str, str]] = []
    c = r.get("compressed")
    if c:
        for kind in ("spectral", "clustered"):
            d, sm = c[kind]["indexes"], c[kind]["summary"]
            flat = d["flat"]["settings"][0]
            rows.append((f"compressed, {kind} data ({c['vectors'] // 1000}k x {c['dim']}): flat q/s b64, RSS",
                         f"{flat['qps_batch64']:.0f}, {flat['rss_anon_mb']:.0f} MiB"))
            for name in ("flat_fp16", "ivfpq", "ivfpq_refine_sq8", "ivfpq_refine_fp16", "ivfpq_refine_mmap"):
                for row in d[name]["settings"]:
                    knobs = "" if row["nprobe"] is None else f" nprobe={row['nprobe']}" + (
                        f" k_factor={row['k_factor']}" if row["k_factor"] else "")
                    rows.append((f"  {name}{knobs}: q/s b64 (x flat), recall@10, RSS anon (+file)",
                                 f"{row['qps_batch64']:.0f} ({row['qps_batch64'] / flat['qps_batch64']:.1f}x), "
                                 f"{row['recall_at_10_vs_flat']:.3f}, {row['rss_anon_mb']:.0f} "
                                 f"(+{row['rss_file_mb']:.0f}) MiB"))
            bpp = ", ".join(f"{k} {v:.0f}" for k, v in sm["bytes_per_passage"].items())
            rows.append(("  bytes per passage", bpp))
            goal = (f"{sm['index']} nprobe={sm['nprobe']} k_factor={sm['k_factor']}: recall "
                    f"{sm['recall_at_10_vs_flat']:.3f}, {sm['qps_over_flat']:.1f}x flat q/s, "
                    f"{sm['memory_over_flat']:.2f}x flat memory") if sm["goal_met"] else "not met"
            rows.append(("  goal (recall >= 0.95, >= 10x q/s, <= 1/3 memory)", goal))
    rs = r.get("replica_shards")
    if rs:
        sv = rs["serve"]
        rows.append((f"replica_shards ({rs['passages'] // 1000}k BM25 passages): q/s b64 at N = 1 / 2 / 4",
                     f"{sv['n1']['qps_batch64']:.0f} / {sv['n2']['qps_batch64']:.0f} / {sv['n4']['qps_batch64']:.0f}"
                     f" (N4 / N1 = {rs['qps_n4_over_n1']:.2f})"))
        if "rss_per_shard_over_unsharded" in rs:
            rows.append(("  RSS per shard replica at N = 1 / 2 / 4, fixed part",
                         f"{sv['n1']['rss_per_shard_mb']:.0f} / {sv['n2']['rss_per_shard_mb']:.0f} / "
                         f"{sv['n4']['rss_per_shard_mb']:.0f} MiB, {rs['rss_fixed_part_mb']:.0f} MiB"))
        rows.append(("  identical to unsharded: BM25, flat (in process), Serve",
                     f"{rs['identical_bm25']}, {rs['identical_flat']}, {rs['serve_same_as_unsharded']}"))
    return rows


if __name__ == "__main__" and len(sys.argv) == 9 and sys.argv[1] == "--measure":
    _, _, f, mm, npr, kf, qp, tp, ms = sys.argv
    row = measure_loaded(f, mm == "1", None if npr == "None" else int(npr), None if kf == "None" else int(kf),
                         np.load(qp), np.load(tp), float(ms))
    print(json.dumps(row))
