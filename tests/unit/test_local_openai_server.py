"""The benchmarks' local OpenAI-compatible server (benchmarks/rl/local_openai_server.py): through the
`openai` backend it answers, and scores gold answers, exactly as the in-process transformers
generator does, after its configured latency."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "rl"))

from local_openai_server import Batcher, build_app  # noqa: E402

from s3_ray.generation import OpenAICompatGenerator  # noqa: E402
from s3_ray.generation.hf import TransformersGenerator  # noqa: E402
from s3_ray.generation.prompt import build_answer_messages  # noqa: E402
from s3_ray.types import Passage  # noqa: E402

LATENCY = 0.3


@pytest.fixture(scope="module")
def server():
    import uvicorn

    batcher = Batcher("tiny-random", max_new_tokens=6, max_context_tokens=256, batch_size=4, num_threads=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(build_app(batcher, "tiny-random", LATENCY), log_level="error", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert batcher.ready.wait(120)
    while not srv.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", batcher
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


def test_answers_and_answer_logprobs_equal_the_in_process_generator(server):
    url, batcher = server
    prompts = [build_answer_messages(q, [Passage(f"d{i}", f'"Doc {i}"\n{q} is in the old town.')])
               for i, q in enumerate(["Where is Holt Company?", "Who founded Cedar Works?", "Where is Elm Mill?"])]
    answers = [["the old town"], ["Anna Kedkul", "Kedkul"], ["Elm"]]
    local = TransformersGenerator("tiny-random", max_new_tokens=6, batch_size=4, max_context_tokens=256)
    remote = OpenAICompatGenerator("tiny-random", url, max_new_tokens=6, max_context_tokens=256, max_concurrency=4)
    t0 = time.perf_counter()
    got = remote.generate(prompts)
    assert time.perf_counter() - t0 >= LATENCY  # every request waits its latency first
    assert got == local.generate(prompts)  # (tiny-random's first lines may be empty: the scores below pin more)
    assert remote.answer_logprobs(prompts, answers) == pytest.approx(local.answer_logprobs(prompts, answers), abs=1e-4)
    assert batcher.served["requests"] > batcher.served["batches"]  # concurrent requests shared a batch
