"""Frozen generator behind an OpenAI-compatible chat-completions server (vLLM, Ray Serve LLM, hosted APIs).

The reward needs many short answers, so throughput comes from requests in flight, not from one
big batch: each prompt is one `POST {base_url}/chat/completions`, and a thread pool of
`max_concurrency` workers bounds how many the server sees at once. Transient failures (429,
5xx, dropped connections, timeouts) are retried with exponential backoff, honouring a numeric
`Retry-After`; anything else fails at once with the server's message.

Passages are cut so the prompt fits `max_context_tokens`, as the other backends cut them (later
passages lose text first; `s3_ray.generation.fit`). Tokens are counted with the served model's
tokenizer when one is on this machine (never downloaded), else estimated at one token per three
characters, which over-counts English text; `decoding` records which count was used.

`answer_logprobs` (the dense reward metric) asks the server for the log-probabilities of the
prompt's own tokens: the answer prompt plus the gold answer as the assistant's reply, continued
rather than closed (`continue_final_message`, `prompt_logprobs`: vLLM's OpenAI server and others
built on it). A server that does not return them raises `AnswerLogprobUnsupported`, which the
reward's check turns into a one-line error before training starts.

The API key is read from the environment variable named in the config when a request is
built. It is never stored in `model_id`, `decoding` (the response-cache key), error messages,
`repr` or the pickled state.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from s3_ray.generation.base import Messages, validate_prompts
from s3_ray.generation.fit import (
    FIT_TOKENIZER,
    CharEstimateCounter,
    ChatTemplateCounter,
    TokenCounter,
    context_fit_mode,
    fit_prompt,
    load_local_tokenizer,
)
from s3_ray.generation.likelihood import AnswerLogprobUnsupported, best_of, validate_answers
from s3_ray.retry import Retry, Transient

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAICompatError(RuntimeError):
    """A chat-completions request failed for good; the message names the server, status and cause."""


def is_retryable_status(status: int) -> bool:
    """429 (rate limit), 408/409 and every 5xx are worth another try; other 4xx are not.

    >>> [is_retryable_status(s) for s in (200, 400, 401, 429, 500, 503, 599)]
    [False, False, False, True, True, True, True]
    """
    return status in RETRY_STATUS or 500 <= status <= 599


class _RetryableStatus(Transient):
    """The server answered with a status worth another try (`is_retryable_status`)."""


def first_line(text: str) -> str:
    """The first non-empty line, stripped (the same post-processing as the transformers backend).

    >>> first_line("  Paris\\nBecause ...")
    'Paris'
    >>> first_line("")
    ''
    """
    return text.strip().split("\n", 1)[0].strip()


class OpenAICompatGenerator:
    """Chat completions against `base_url` (which ends in `/v1` for most servers)."""

    def __init__(self, model: str, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 24,
                 max_context_tokens: int = 768, temperature: float = 0.0, request_timeout_s: float = 60.0,
                 max_retries: int = 4, max_concurrency: int = 16, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0) -> None:
        if not model:
            raise ValueError("generator.model must name the served model for the openai backend")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"generator.base_url must be an http(s) URL for the openai backend, got {base_url!r}")
        if (max_new_tokens < 1 or max_context_tokens < 1 or max_concurrency < 1 or max_retries < 0
                or request_timeout_s <= 0 or temperature < 0):
            raise ValueError("max_new_tokens, max_context_tokens and max_concurrency must be >= 1, "
                             "max_retries >= 0, request_timeout_s > 0 and temperature >= 0")
        self._model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_new_tokens = max_new_tokens
        self.max_context_tokens = max_context_tokens
        # decided once (and pickled), so `decoding` never changes under a cache
        self.context_fit = context_fit_mode("openai", model)
        self.temperature = temperature
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._client: Any = None
        self._counter: TokenCounter | None = None  # the tokenizer loads on first use
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._stats: dict[str, float] = {"calls": 0, "prompts": 0, "requests": 0, "retries": 0, "prompt_tokens": 0,
                                         "completion_tokens": 0, "responses_without_usage": 0, "truncated_prompts": 0,
                                         "seconds": 0.0,
                                         "max_in_flight": 0}
        self._in_flight = 0

    # identity (the cache key) ---------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self._model

    @property
    def decoding(self) -> dict[str, Any]:
        return {"backend": "openai", "temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "max_context_tokens": self.max_context_tokens, "context_fit": self.context_fit, "first_line": True}

    def __repr__(self) -> str:
        return f"OpenAICompatGenerator(model={self._model!r}, base_url={self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        keep = ("_model", "base_url", "api_key_env", "max_new_tokens", "max_context_tokens", "context_fit",
                "temperature", "request_timeout_s", "max_retries", "max_concurrency", "backoff_s", "max_backoff_s")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # context budget -------------------------------------------------------------------------
    def _token_counter(self) -> TokenCounter:
        with self._lock:
            if self._counter is None:
                self._counter = (ChatTemplateCounter(load_local_tokenizer(self._model))
                                 if self.context_fit == FIT_TOKENIZER else CharEstimateCounter())
            return self._counter

    def fit(self, messages: Messages) -> tuple[Messages, bool]:
        """The messages to send, with the contexts cut until the prompt fits `max_context_tokens`.

        Returns (messages, was_cut); PromptTooLongError when even the bare prompt is too long.
        """
        fitted = fit_prompt(messages, self.max_context_tokens, self._token_counter())
        return fitted.messages, fitted.cut

    # HTTP -----------------------------------------------------------------------------------
    def _http(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=self.max_concurrency,
                                      max_keepalive_connections=self.max_concurrency)
                self._client = httpx.Client(timeout=self.request_timeout_s, limits=limits)
            return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _scrub(self, text: str) -> str:
        """`text` with the API key (if a server or library echoed it) replaced."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def _fail(self, msg: str) -> OpenAICompatError:
        return OpenAICompatError(self._scrub(f"{self.base_url}/chat/completions (model {self._model!r}): {msg}"))

    def _complete(self, messages: Messages) -> str:
        """One chat completion, retrying transient failures (`s3_ray.retry`, capped backoff that
        honours a numeric Retry-After); `stats()["retries"]` counts the retries."""
        body = {"model": self._model, "messages": messages, "max_tokens": self.max_new_tokens,
                "temperature": self.temperature}
        return self._post(body, self._parse)

    def _post(self, body: dict[str, Any], parse: Any) -> Any:

        def count_retry(will_retry: bool) -> None:
            if will_retry:
                with self._lock:
                    self._stats["retries"] += 1

        def give_up(attempts: int, err: Transient) -> OpenAICompatError:
            last = ", last " if isinstance(err, _RetryableStatus) else ": "
            return self._fail(f"failed after {attempts} attempts{last}{err.cause}")

        return Retry(self.max_retries, self.backoff_s, self.max_backoff_s).call(
            lambda: self._attempt(body, parse), what=f"{self.base_url}/chat/completions", give_up=give_up,
            on_failure=count_retry)

    def _attempt(self, body: dict[str, Any], parse: Any) -> Any:
        """One request: the answer, or `Transient` (refused, reset or timed out; a retryable status),
        or the error that no retry can change (authentication, another 4xx, a malformed reply)."""
        import httpx

        client = self._http()
        with self._lock:
            self._in_flight += 1
            self._stats["max_in_flight"] = max(self._stats["max_in_flight"], self._in_flight)
            self._stats["requests"] += 1
        start = time.perf_counter()
        try:
            try:
                resp = client.post(f"{self.base_url}/chat/completions", json=body, headers=self._headers())
            except httpx.TransportError as err:  # refused, reset, timed out
                raise Transient(f"{type(err).__name__}: {err}") from None
            if resp.status_code == 200:
                with self._lock:
                    self._latencies.append(time.perf_counter() - start)
                return parse(resp)
            cause = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if resp.status_code == 400 and "prompt_logprobs" in body:
                raise AnswerLogprobUnsupported(self._scrub(f"{self.base_url} refused prompt log-probs: {cause}"))
            if resp.status_code in (401, 403):
                raise self._fail(f"authentication failed (HTTP {resp.status_code}); check the key in "
                                 f"${self.api_key_env}: {resp.text[:300]}")
            if not is_retryable_status(resp.status_code):
                raise self._fail(cause)
            raise _RetryableStatus(cause, retry_after=resp.headers.get("retry-after"))
        finally:
            with self._lock:
                self._in_flight -= 1

    def _parse(self, resp: Any) -> str:
        try:
            data = resp.json()
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise self._fail(f"response has no choices[0].message.content ({type(err).__name__}: {err}): "
                             f"{resp.text[:300]}") from None
        if not isinstance(content, str):
            raise self._fail(f"choices[0].message.content is {type(content).__name__}, expected a string")
        usage = data.get("usage") or {}
        with self._lock:
            if "completion_tokens" in usage:
                self._stats["prompt_tokens"] += int(usage.get("prompt_tokens", 0))
                self._stats["completion_tokens"] += int(usage["completion_tokens"])
            else:
                self._stats["responses_without_usage"] += 1
        return first_line(content)

    # Generator protocol ---------------------------------------------------------------------
    def generate(self, prompts: list[Messages]) -> list[str]:
        """One completion per prompt, in input order, at most `max_concurrency` requests in flight."""
        validate_prompts(prompts)
        if not prompts:
            return []
        start = time.perf_counter()
        fitted = [self.fit(m) for m in prompts]
        to_send = [m for m, _ in fitted]
        if len(prompts) == 1 or self.max_concurrency == 1:
            out = [self._complete(m) for m in to_send]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
                out = list(pool.map(self._complete, to_send))
        with self._lock:
            self._stats["truncated_prompts"] += sum(1 for _, cut in fitted if cut)
            self._stats["calls"] += 1
            self._stats["prompts"] += len(prompts)
            self._stats["seconds"] += time.perf_counter() - start
        return out

    def answer_logprobs(self, prompts: list[Messages], answers: list[list[str]]) -> list[float]:
        """Per prompt, the best over its answers of their mean token log-probability as the reply,
        from the server's prompt log-probs (one request per alias)."""
        validate_prompts(prompts)
        validate_answers(len(prompts), answers)
        rows = [(self.fit(m)[0], a.strip(), i) for i, (m, alts) in enumerate(zip(prompts, answers))
                for a in dict.fromkeys(x.strip() for x in alts)]

        def one(row: tuple[Messages, str, int]) -> float:
            msgs, alias, _ = row
            body = {"model": self._model, "messages": [*msgs, {"role": "assistant", "content": alias}],
                    "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "add_generation_prompt": False,
                    "continue_final_message": True}
            return self._post(body, lambda resp: tail_mean_logprob(resp, alias, self.base_url))

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(rows)))) as pool:
            values = list(pool.map(one, rows))
        return best_of(values, [r[2] for r in rows], len(prompts))

    def stats(self) -> dict[str, float]:
        """Counters since construction, token usage as the server reported it, request latency."""
        with self._lock:
            s: dict[str, float] = dict(self._stats)
            lat = sorted(self._latencies)
        secs = s["seconds"]
        s["completion_tokens_per_s"] = s["completion_tokens"] / secs if secs else 0.0
        s["prompts_per_s"] = s["prompts"] / secs if secs else 0.0
        s["latency_mean_s"] = sum(lat) / len(lat) if lat else 0.0
        s["latency_p50_s"] = lat[len(lat) // 2] if lat else 0.0
        s["latency_p95_s"] = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
        return s

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def tail_mean_logprob(resp: Any, alias: str, where: str) -> float:
    """Mean log-probability of the prompt's last tokens that spell `alias`, from a response's
    `prompt_logprobs` (vLLM's shape: one `{token id: {"logprob", "decoded_token", ...}}` per prompt
    token, `null` for the first). No such field: `AnswerLogprobUnsupported`."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    entries = data.get("prompt_logprobs") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise AnswerLogprobUnsupported(f"{where} returned no prompt_logprobs: the server does not give the "
                                       "log-probabilities of prompt tokens (use a vLLM server, or reward.metric=genacc)")
    text, picked = "", []
    for entry in reversed(entries):
        if not isinstance(entry, dict) or not entry:
            break
        tok = next(iter(entry.values()))
        picked.append(float(tok["logprob"]))
        text = str(tok.get("decoded_token", "")) + text
        if alias in text:
            return sum(picked) / len(picked)
    raise AnswerLogprobUnsupported(f"{where}: the prompt_logprobs returned do not end with the answer {alias!r}")
