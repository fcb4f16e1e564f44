"""Load benchmark: the retriever `/retrieve` and copilot `/copilot/search` HTTP endpoints under
many concurrent clients.

    python benchmarks/serving/load_bench.py [--duration 60] [--clients 32] [--token TOKEN] [key=value ...]

Starts a local Ray cluster, builds a BM25 index of the embedded corpus in a temporary folder,
deploys the retriever and the copilot apps (the copilot with the `tiny-random` searcher by
default, so the load exercises the serving path rather than the language model), and then, per
endpoint, runs `--clients` httpx AsyncClient loops against 127.0.0.1 for `--duration` seconds.
Reports requests served, errors by kind, p50/p99 latency and the resident memory (RSS) of every
replica process (and the HTTP proxy) before and after the load. Prints a table and writes
`benchmarks/results/load.json`. Every loop stops by itself at the deadline; a request in flight
at the deadline gets at most `--timeout` more seconds.

`--token` is sent as `Authorization: Bearer <token>`. When the config names `serve.auth_token_env`,
the same token is exported under that name before Ray starts, so the deployed apps require it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = str(REPO / "jobs" / "configs" / "demo.yaml")
DEFAULT_OUT = str(REPO / "benchmarks" / "results" / "load.json")


# --------------------------------------------------------------------------------------------
# Ray helpers shared with the fault_*.py scripts
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(num_cpus: int = 2) -> None:
    """A local cluster with the dashboard on: `ray.util.state` (used to find replicas) needs it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             object_store_memory=256 * 1024**2, log_to_driver=False)


def alive_actors(class_name: str, timeout_s: float = 30.0) -> list[Any]:
    """ALIVE actors of one class (ActorState rows: name, pid, ...), via the state API of THIS
    driver's cluster (other Ray instances may run on the same machine)."""
    import ray
    from ray.util.state import list_actors

    return list(list_actors(address=ray.get_runtime_context().gcs_address, timeout=int(timeout_s),
                            filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")]))


def replica_actors(app: str, deployment: str) -> list[Any]:
    return alive_actors(f"ServeReplica:{app}:{deployment}")


def proxy_actors() -> list[Any]:
    return alive_actors("ProxyActor")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def bench_config(config: str, overrides: list[str], workdir: Path) -> Any:
    """The job config with the run folder and index moved into `workdir` (nothing lands in runs/)."""
    from s3_ray.config import load_job_config

    base = [f"run_dir={workdir / 'run'}", f"retrieval.index_dir={workdir / 'index'}",
            "generator.cache_path=null", "wandb.enabled=false"]
    return load_job_config(config, base + list(overrides))


def build_bench_index(cfg: Any) -> None:
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.retrieval.index import build_index

    build_index(resolve_paths(cfg.data).corpus, cfg.retrieval, progress=False)


def machine() -> dict[str, Any]:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "processor": platform.machine(),
            "load_avg_1m_at_start": os.getloadavg()[0]}


# --------------------------------------------------------------------------------------------
# load generation
# --------------------------------------------------------------------------------------------
async def run_load(url: str, bodies: list[dict[str, Any]], clients: int, duration_s: float, timeout_s: float,
                   headers: dict[str, str]) -> dict[str, Any]:
    """`clients` loops POSTing bodies round-robin until the deadline; latency of every request."""
    import httpx

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.perf_counter() + duration_s

    async def worker(n: int, http: httpx.AsyncClient) -> None:
        i = n
        while time.perf_counter() < deadline:
            body = bodies[i % len(bodies)]
            i += clients
            t0 = time.perf_counter()
            try:
                resp = await http.post(url, json=body)
            except httpx.HTTPError as err:
                errors[type(err).__name__] += 1
                continue
            if resp.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[f"HTTP {resp.status_code}"] += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as http:
        await asyncio.gather(*(worker(n, http) for n in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000.0
    return {
        "url": url, "clients": clients, "duration_s": duration_s, "wall_s": round(wall, 2),
        "served": len(latencies), "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        "throughput_rps": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "max_ms": round(float(lat.max()), 1) if len(lat) else None,
    }


def warm_up(url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float, n: int = 3) -> None:
    """A few sequential requests so model loading and first-call costs stay out of the figures."""
    import httpx

    with httpx.Client(timeout=timeout_s, headers=headers) as http:
        for _ in range(n):
            resp = http.post(url, json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"warm-up POST {url} -> HTTP {resp.status_code}: {resp.text[:300]}")


def memory(app: str, deployment: str) -> dict[str, float]:
    """RSS (MiB) of each replica of a deployment and of the HTTP proxy, keyed by role and pid."""
    out = {f"replica pid {a.pid}": round(rss_mb(a.pid), 1) for a in replica_actors(app, deployment)}
    out.update({f"proxy pid {a.pid}": round(rss_mb(a.pid), 1) for a in proxy_actors()})
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/serving/load_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (serve and rollout sections are used)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per endpoint")
    p.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--endpoints", default="retrieve,copilot", help="comma list of retrieve, copilot")
    p.add_argument("--searcher-model", default="tiny-random", help="copilot's searcher model")
    p.add_argument("--token", default=None, help="bearer token sent with every request")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. serve.max_ongoing_requests=32")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.timeout <= 0:
        p.error("--duration and --timeout must be > 0 and --clients >= 1")
    unknown = set(args.endpoints.split(",")) - {"retrieve", "copilot"}
    if unknown:
        p.error(f"--endpoints: unknown {sorted(unknown)}; known: retrieve, copilot")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    endpoints = args.endpoints.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="s3ray-load-"))
    port = free_port()
    cfg = bench_config(args.config, [f"searcher.model={args.searcher_model}", f"serve.port={port}",
                                     "serve.host=127.0.0.1", *args.overrides], workdir)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    if args.token and cfg.serve.auth_token_env:
        os.environ[cfg.serve.auth_token_env] = args.token  # replicas inherit it from the raylet
    build_bench_index(cfg)

    from s3_ray.data.embedded import load_split

    questions = [q.question for split in ("train", "test") for q in load_split(cfg.data, split)]
    bodies = {"retrieve": [{"queries": [q], "topk": cfg.rollout.top_k, "return_scores": True} for q in questions],
              "copilot": [{"question": q} for q in questions]}
    targets = {"retrieve": ("retriever", "RetrieverDeployment", f"http://127.0.0.1:{port}/retrieve"),
               "copilot": ("copilot", "CopilotDeployment", f"http://127.0.0.1:{port}/copilot/search")}

    start_ray()
    from ray import serve

    from deployments.copilot import CopilotAppArgs
    from deployments.copilot import build_app as build_copilot
    from deployments.retriever import RetrieverAppArgs
    from deployments.retriever import build_app as build_retriever

    results: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_retriever(RetrieverAppArgs.from_config(cfg)), name="retriever", route_prefix="/")
        if "copilot" in endpoints:
            serve.run(build_copilot(CopilotAppArgs.from_config(cfg)), name="copilot", route_prefix="/copilot")
        print(f"apps up in {time.perf_counter() - t0:.1f} s; load: {args.clients} clients x {args.duration:g} s",
              file=sys.stderr)
        for name in endpoints:
            app, deployment, url = targets[name]
            warm_up(url, bodies[name][0], headers, args.timeout)
            before = memory(app, deployment)
            res = asyncio.run(run_load(url, bodies[name], args.clients, args.duration, args.timeout, headers))
            res["rss_mb_before"], res["rss_mb_after"] = before, memory(app, deployment)
            if args.token:  # the figures were taken with auth on only if a token-less call is refused
                import httpx

                res["status_without_token"] = httpx.post(url, json=bodies[name][0], timeout=args.timeout).status_code
            if name == "copilot":
                res["copilot_batching"] = serve.get_app_handle("copilot").stats.remote().result(timeout_s=30)
            results[name] = res
            print(f"{name}: {res['served']} served, {res['errors']} errors, p50 {res['p50_ms']} ms, "
                  f"p99 {res['p99_ms']} ms", file=sys.stderr)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "machine": machine(),
        "settings": {"clients": args.clients, "duration_s": args.duration, "timeout_s": args.timeout,
                     "searcher_model": args.searcher_model, "rollout": cfg.rollout.model_dump(),
                     "serve": cfg.serve.model_dump(exclude={"auth_token_env"}), "auth": bool(args.token)},
        "endpoints": results,
    }
    report["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(f"wrote {args.out}")
    return 1 if any(r["errors"] for r in results.values()) else 0


def table(results: dict[str, Any]) -> str:
    """Markdown table of the headline figures."""
    rows = ["| endpoint | clients | s | served | req/s | errors | p50 ms | p99 ms | replica RSS MiB before -> after |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rss = ", ".join(f"{r['rss_mb_before'][k]:.0f} -> {r['rss_mb_after'].get(k, float('nan')):.0f}"
                        for k in r["rss_mb_before"] if k.startswith("replica"))
        rows.append(f"| {name} | {r['clients']} | {r['duration_s']:g} | {r['served']} | {r['throughput_rps']} | "
                    f"{r['errors']} | {r['p50_ms']} | {r['p99_ms']} | {rss} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
