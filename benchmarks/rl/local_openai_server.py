"""A local OpenAI-compatible chat-completions server that answers with a real model after a latency.

    python benchmarks/rl/local_openai_server.py --model smollm2-135m-instruct --latency 1.0 [--port 0]

It stands in for a remote generator (a 14B model behind vLLM on other machines, a hosted API) on
one machine, for benchmarks of the `openai` generator backend (`benchmarks/rl/async_rl.py`):

- every request first waits `--latency` seconds without using a CPU (asyncio), as a network round
  trip and a remote queue would; the model then answers;
- requests that are waiting together are answered in one batch by `TransformersGenerator`
  (greedy, first line, prompts cut to `--max-context-tokens`): the in-cluster generator's code, so
  the answers and log-likelihoods are the ones the in-cluster generator gives;
- `prompt_logprobs` requests (what `OpenAICompatGenerator.answer_logprobs` sends: the prompt plus
  the gold answer as an unfinished assistant reply, vLLM's fields) get the log-prob of each token
  of that final assistant message in vLLM's shape (`{token id: {"logprob", "rank",
  "decoded_token"}}`), computed after the prompt rendered with its generation header, as the
  in-cluster `answer_logprobs` does; the positions before it are `null` (vLLM fills them; the
  client reads only the answer's tail);
- `GET /v1/models` lists the model once it is loaded (a readiness probe).

It prints `listening on http://HOST:PORT/v1` (the port chosen when `--port 0`) before loading
the model; requests that come before the model is loaded wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import socket
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handlers' annotations in these globals

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def token_logprobs(model: Any, rows: list[tuple[list[int], list[int]]]) -> list[list[float]]:
    """Per row (prompt ids, answer ids): the log-prob of each answer token after what precedes it,
    teacher forced, rows left padded with positions counted from each row's first token."""
    import torch

    width = max(len(p) + len(a) for p, a in rows)
    keep = max(len(a) for _, a in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (p, a) in enumerate(rows):
        ids[r, width - len(p) - len(a):] = torch.tensor(p + a, dtype=torch.long)
        mask[r, width - len(p) - len(a):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep + 1,
                       use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # logp[:, j] scores token width - keep + j
    out = []
    for r, (_, a) in enumerate(rows):
        tgt = torch.tensor(a, dtype=torch.long)
        out.append(logp[r, keep - len(a):].gather(-1, tgt[:, None]).squeeze(-1).tolist())
    return out


class Batcher:
    """One thread runs the model: it takes every request waiting, answers the chat requests in one
    `generate` call and scores the log-prob requests in batches, and resolves their futures."""

    def __init__(self, model_name: str, max_new_tokens: int, max_context_tokens: int, batch_size: int,
                 num_threads: int) -> None:
        self.args = (model_name, max_new_tokens, max_context_tokens, batch_size, num_threads)
        self.jobs: queue.Queue[tuple[str, Any, Future]] = queue.Queue()
        self.ready = threading.Event()
        self.served = {"requests": 0, "batches": 0}
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, kind: str, payload: Any) -> Future:
        fut: Future = Future()
        self.jobs.put((kind, payload, fut))
        return fut

    def _loop(self) -> None:
        from s3_ray.generation.fit import ChatTemplateCounter
        from s3_ray.generation.hf import TransformersGenerator

        name, new, context, batch, threads = self.args
        gen = TransformersGenerator(name, max_new_tokens=new, batch_size=batch, num_threads=threads,
                                    max_context_tokens=context)
        counter = ChatTemplateCounter(gen.tokenizer)
        self.ready.set()
        while True:
            waiting = [self.jobs.get()]
            while True:
                try:
                    waiting.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            self.served["requests"] += len(waiting)
            self.served["batches"] += 1
            chats = [(m, f) for kind, m, f in waiting if kind == "chat"]
            scores = [(m, f) for kind, m, f in waiting if kind == "logprobs"]
            try:
                if chats:
                    for (_, fut), text in zip(chats, gen.generate([m for m, _ in chats])):
                        fut.set_result(text)
                for lo in range(0, len(scores), batch):
                    part = scores[lo: lo + batch]
                    rows = [(gen.fit(m[:-1])[0], list(counter.encode(m[-1]["content"]))) for m, _ in part]
                    for (_, fut), (_, ans), values in zip(part, rows, token_logprobs(gen.model, rows)):
                        fut.set_result([(t, v, gen.tokenizer.decode([t])) for t, v in zip(ans, values)])
            except Exception as err:  # every waiting request hears it (HTTP 500), the server keeps running
                for _, _, fut in waiting:
                    if not fut.done():
                        fut.set_exception(err)


def build_app(batcher: Batcher, model_name: str, latency_s: float) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> Any:
        if not batcher.ready.is_set():
            return JSONResponse({"error": {"message": "loading the model"}}, status_code=503)
        return {"object": "list", "data": [{"id": model_name, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return JSONResponse({"error": {"message": "messages must be a non-empty list"}}, status_code=400)
        await asyncio.sleep(latency_s)
        base = {"id": f"local-{time.monotonic_ns()}", "object": "chat.completion", "model": body.get("model")}
        if body.get("prompt_logprobs") is not None:
            if messages[-1].get("role") != "assistant" or not body.get("continue_final_message"):
                return JSONResponse({"error": {"message": "prompt_logprobs: only the answer's tokens of a final, "
                                               "continued assistant message are scored here"}}, status_code=400)
            tail = await asyncio.wrap_future(batcher.submit("logprobs", messages))
            entries = [None] + [{str(t): {"logprob": v, "rank": 1, "decoded_token": d}} for t, v, d in tail]
            return {**base, "prompt_logprobs": entries, "choices": [
                {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": ""}}]}
        text = await asyncio.wrap_future(batcher.submit("chat", messages))
        return {**base, "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}]}

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/rl/local_openai_server.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="the model that answers (load_causal_lm name)")
    p.add_argument("--latency", type=float, default=1.0, help="seconds every request waits before the model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-context-tokens", type=int, default=768)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-threads", type=int, default=1, help="torch threads of the model")
    args = p.parse_args(argv)
    if args.latency < 0:
        p.error("--latency must be >= 0")
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}/v1", flush=True)
    batcher = Batcher(args.model, args.max_new_tokens, args.max_context_tokens, args.batch_size, args.num_threads)
    server = uvicorn.Server(uvicorn.Config(build_app(batcher, args.model, args.latency), log_level="warning",
                                           lifespan="off"))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
