"""The sharded retriever app on Serve: a front deployment over per-shard deployments answers like the
unsharded index, loses no query when a shard replica is killed mid-batch, and refuses to start
on a shard of another corpus."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from fakes import free_port

from s3_ray.clients import RetrieverClient
from s3_ray.config import RetrievalConfig
from s3_ray.data.corpus import read_corpus, write_corpus
from s3_ray.data.embedded import embedded_dir
from s3_ray.data.qa import read_qa
from s3_ray.retrieval import build_index, load_retriever
from s3_ray.retrieval.shard_merge import same_results
from s3_ray.retrieval.shards import shard_dir
from s3_ray.types import Passage

QUERIES = [q.question for q in read_qa(embedded_dir() / "test.jsonl")]


def _shard_replicas(shard: int) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::retriever#") and f"#RetrieverDeploymentShard{shard}#" in a["name"])


@pytest.mark.ray
def test_sharded_app_equals_unsharded_and_survives_a_killed_shard_replica(serve_instance, tmp_path: Path) -> None:
    import ray

    from deployments.retriever import RetrieverAppArgs, build_app

    serve = serve_instance
    passages = read_corpus(embedded_dir() / "corpus.jsonl")
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, passages)
    whole = RetrievalConfig(index_dir=str(tmp_path / "whole"))
    cut = RetrievalConfig(index_dir=str(tmp_path / "cut"), replica_shards=2)
    build_index(corpus, whole, progress=False)
    build_index(corpus, cut, progress=False)
    expected = load_retriever(whole).search(QUERIES, 5)

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = RetrieverAppArgs(retrieval=cut, retriever_replicas=2, retriever_cpus=0.1, max_batch_size=8,
                            shard_timeout_s=20, shard_retries=3)
    handle = serve.run(build_app(args), name="retriever", route_prefix="/")
    assert len(_shard_replicas(0)) == 2 and len(_shard_replicas(1)) == 2
    assert same_results(handle.search.remote(QUERIES, 5).result(timeout_s=60), expected)
    client = RetrieverClient.from_app("retriever", timeout_s=30)
    assert same_results(client.search(QUERIES[:10], 5), expected[:10])
    with httpx.Client(timeout=30) as http:
        health = http.get(f"http://127.0.0.1:{port}/health").json()
        assert health["passages"] == len(passages) and health["status"] == "ok"
        body = http.post(f"http://127.0.0.1:{port}/retrieve", json={"queries": QUERIES[:3], "topk": 2}).json()
        assert [[d["document"]["id"] for d in q] for q in body["result"]] == \
            [[h.passage.id for h in q[:2]] for q in expected[:3]]
        assert [[d["score"] for d in q] for q in body["result"]] == [[h.score for h in q[:2]] for q in expected[:3]]

    # A stream of batches keeps both replicas of shard 0 busy while one of them is killed.
    results: list[tuple[int, object]] = []
    stop = threading.Event()

    async def stream() -> None:
        async def worker(w: int) -> None:
            n = 0
            while not stop.is_set() or n < 3:
                try:
                    results.append((w, await handle.search.remote(QUERIES, 5)))
                except Exception as err:  # noqa: BLE001 - a lost query is what the test looks for
                    results.append((w, err))
                n += 1

        await asyncio.gather(*(worker(w) for w in range(6)))

    runner = threading.Thread(target=lambda: asyncio.run(stream()))
    runner.start()
    time.sleep(2.0)
    victim = _shard_replicas(0)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    time.sleep(3.0)
    stop.set()
    runner.join(timeout=120)
    assert not runner.is_alive()
    errors = [r for _, r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert len(results) >= 18 and all(same_results(r, expected) for _, r in results)
    serve.delete("retriever")

    # A shard folder of another corpus: the front refuses to start and names the shard.
    other = tmp_path / "other.jsonl"
    write_corpus(other, [Passage(p.id, p.contents.upper()) for p in passages])
    foreign = RetrievalConfig(index_dir=str(tmp_path / "foreign"), replica_shards=2)
    build_index(other, foreign, progress=False)
    shutil.rmtree(shard_dir(cut.index_dir, 1))
    shutil.copytree(shard_dir(foreign.index_dir, 1), shard_dir(cut.index_dir, 1))
    with pytest.raises(Exception, match="shard 1 holds corpus sha256"):
        serve.run(build_app(RetrieverAppArgs(retrieval=cut, retriever_cpus=0.1)), name="retriever", route_prefix="/")
