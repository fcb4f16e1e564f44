"""Searcher policies: token ids in, one turn of new token ids out, for a whole batch at once.

`HFPolicy` wraps a transformers causal LM. Each row stops right after its first ``</query>`` or
after a ``<search_complete>`` tag with a true value, so one generation is one protocol turn; only
the newly generated tokens are checked, never the prompt (which holds earlier turns' tags).
`ScriptedPolicy` replays a function of the decoded sequence, for tests and examples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from s3_ray.agent.policy_api import (
    TAIL_TOKENS,
    Policy,
    PolicyStats,
    check_seqs,
    has_stop,
    stop_length,
    strip_trailing,
)
from s3_ray.config import SearcherConfig
from s3_ray.models import unwrap
from s3_ray.models.autocast import inference_autocast
from s3_ray.models.kv import cache_field


MIN_SHARED_PREFIX = 16
"""Fewest common leading tokens that `HFPolicy` reads once for a whole batch (below that, one
decoder call more costs about what it saves)."""


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest token prefix all rows share.

    >>> _common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]), _common_prefix([[1], [2]])
    (2, 0)
    """
    shortest = min(len(r) for r in rows)
    for i in range(shortest):
        token = rows[0][i]
        if any(r[i] != token for r in rows):
            return i
    return shortest


def closing_ids(tokenizer: Any) -> Any:
    """Token ids whose text holds ">" (a LongTensor; one pass over the vocabulary, ~30 ms for 49k).

    Every stop tag ends with ">", so a row can only have just finished its turn when its newest
    token is one of these; the stopping criterion decodes only those rows (a superset: byte
    tokens such as "<0x41>" and special tokens are in it too, which only costs a check).
    """
    import torch

    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([i for i, t in enumerate(tokens) if t is not None and ">" in t], dtype=torch.long)


def _stopping_criteria(tokenizer: Any, prompt_len: int, closing: Any = None) -> Any:
    """A per-row StoppingCriteria over the tokens generated after `prompt_len` (`closing`:
    `closing_ids(tokenizer)`, computed here when not given)."""
    import torch
    from transformers import StoppingCriteria

    if closing is None:
        closing = closing_ids(tokenizer)

    class _TagStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if input_ids.shape[1] <= prompt_len:
                return done
            rows = torch.isin(input_ids[:, -1], closing.to(input_ids.device)).nonzero().flatten().tolist()
            if rows:
                start = max(prompt_len, input_ids.shape[1] - TAIL_TOKENS)
                tails = tokenizer.batch_decode(input_ids[rows, start:].tolist(), skip_special_tokens=True)
                for row, tail in zip(rows, tails):
                    done[row] = has_stop(tail)
            return done

    return _TagStop()


def _first_token_timer(box: list[float]) -> Any:
    """A StoppingCriteria that never stops and notes (in `box`) when the first new token exists:
    the prefill's end."""
    import torch
    from transformers import StoppingCriteria

    class _Timer(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            if not box:
                box.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return _Timer()


def _logprob_recorder(temperature: float) -> Any:
    """A LogitsProcessor that records, per step, the log-prob of the token each row sampled at
    `temperature` (before top-p: the distribution the trainer's log-probs are taken from).

    transformers runs custom processors before its temperature and top-p warpers, so `scores` are
    the raw logits. A step's token is only known at the next call (or after `generate`): the last
    step's log-softmax is kept until then, never more than one (B, V) tensor."""
    import torch
    from transformers import LogitsProcessor

    class _Recorder(LogitsProcessor):
        def __init__(self) -> None:
            self.steps: list[torch.Tensor] = []  # (B,) per generated token
            self._last: torch.Tensor | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self._last is not None:
                self.steps.append(self._last.gather(-1, input_ids[:, -1:]).squeeze(-1))
            self._last = torch.log_softmax(scores.float() / temperature, dim=-1)
            return scores

        def finish(self, sequences: torch.Tensor, prompt_len: int) -> list[list[float]]:
            """(B, new tokens) log-probs once `generate` returned `sequences`."""
            if self._last is not None and sequences.shape[1] > prompt_len + len(self.steps):
                self.steps.append(self._last.gather(-1, sequences[:, prompt_len + len(self.steps)].unsqueeze(-1))
                                  .squeeze(-1))
            self._last = None
            if not self.steps:
                return [[] for _ in range(sequences.shape[0])]
            return torch.stack(self.steps, dim=1).cpu().tolist()

    return _Recorder()


class HFPolicy:
    """Batched sampling from a transformers causal LM with left padding and tag stops."""

    def __init__(self, model: Any, tokenizer: Any, cfg: SearcherConfig, stop_at_tags: bool = True,
                 reuse_cache: bool = True, share_prefill: bool = True) -> None:
        """`stop_at_tags=False` decodes every row to `max_new_tokens` (or eos) and only cuts the
        turn afterwards: same turns, more decoding; kept to measure what early stopping saves.
        `reuse_cache` keeps the batch's KV cache from one turn to the next (`turn_cache`), so a
        turn feeds only the tokens added since; call `reset_cache()` after changing the weights.
        `share_prefill` reads once what several rows share (the instruction every prompt opens
        with; a GRPO group's rows start from the same prompt) and copies its KV cache to every row
        that has it."""
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; set tokenizer.pad_token before building HFPolicy")
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.stats = PolicyStats()
        self.stop_at_tags = stop_at_tags
        self._closing = closing_ids(tokenizer) if stop_at_tags else None
        self.reuse_cache = reuse_cache
        self.share_prefill = share_prefill
        self._cache: Any = None  # TurnCache of the last call, or None
        self.prefill_tokens = 0  # rows x positions fed before decoding, padding included (what reuse saves)
        eos = tokenizer.eos_token_id
        self._drop = {tokenizer.pad_token_id} | ({eos} if eos is not None else set())
        # per row of the last `generate`, the log-prob each returned token was sampled with
        self.last_logprobs: list[list[float]] = []
        self.version = 0  # the policy version of the weights (set by whoever pushes them)

    def _batch(self, seqs: list[list[int]]) -> tuple[Any, Any]:
        """Left-truncate to max_prompt_tokens, then left-pad into (B, T) ids and attention mask."""
        import torch

        limit = self.cfg.max_prompt_tokens
        rows = [list(s[-limit:]) for s in seqs]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        device = getattr(self.model, "device", torch.device("cpu"))
        return ids.to(device), mask.to(device)

    def reset_cache(self) -> None:
        """Drop the kept KV cache (frees its memory; the next call prefills in full)."""
        self._cache = None

    def _inputs(self, seqs: list[list[int]]) -> tuple[Any, Any, Any, bool]:
        """(ids, mask, past, cacheable): a continuation of the kept cache when every sequence
        extends one of its rows, else a fresh batch (prefilled once per shared part, see
        `_shared_prefill`, or left-padded)."""
        limit = self.cfg.max_prompt_tokens
        cacheable = self.reuse_cache and all(len(s) <= limit for s in seqs)
        cache, self._cache = self._cache, None  # consumed either way
        if cacheable and cache is not None:
            cont = cache.extend(seqs, self.tokenizer.pad_token_id, max_width=2 * limit)
            if cont is not None:
                ids, mask, past = cont
                self.prefill_tokens += int(ids.shape[0]) * (int(ids.shape[1]) - cache.width)
                return ids, mask, past, True
        if self.share_prefill:
            shared = self._shared_prefill([list(s[-limit:]) for s in seqs])
            if shared is not None:
                return (*shared, cacheable)
        ids, mask = self._batch(seqs)
        self.prefill_tokens += int(ids.numel())
        return ids, mask, None, cacheable

    def _shared_prefill(self, rows: list[list[int]]) -> tuple[Any, Any, Any] | None:
        """(ids, mask, past) with the KV cache of every row's first T-1 positions, where what rows
        share is read once: the longest token prefix common to all rows (the instruction every
        episode's prompt opens with) and whole duplicate rows (a GRPO group's). None when rows
        share neither. `generate` then reads only the last column of each row.

        Layout: ``[common prefix][pad][rest of the row]``; the pads are masked holes, as in
        `turn_cache`, and positions come from the attention mask, so every row sees exactly what a
        full prefill of it gives."""
        import torch

        first: dict[tuple[int, ...], int] = {}
        owner = [first.setdefault(tuple(r), i) for i, r in enumerate(rows)]
        unique = sorted(set(owner))
        common = _common_prefix([rows[u] for u in unique]) if len(unique) > 1 else 0
        common = min(common, min(len(r) for r in rows) - 1)  # each row keeps a last token to feed
        if common < MIN_SHARED_PREFIX:
            common = 0
        if common == 0 and len(unique) == len(rows):
            return None
        width = max(len(r) for r in rows) - common  # the rest, left-padded
        if common + width < 2:
            return None
        device = getattr(self.model, "device", torch.device("cpu"))
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), common + width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :common] = torch.tensor(row[:common], dtype=torch.long)
            mask[i, :common] = 1
            ids[i, ids.shape[1] - (len(row) - common):] = torch.tensor(row[common:], dtype=torch.long)
            mask[i, ids.shape[1] - (len(row) - common):] = 1
        ids, mask = ids.to(device), mask.to(device)
        slot = {row: j for j, row in enumerate(unique)}
        # the decoder alone: the prefix needs its KV cache, not logits (the vocabulary projection
        # over every prompt position would cost more than the layers of a small model)
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model
        past = None
        with torch.inference_mode(), inference_autocast(ids.device):
            if common:
                out = decoder(input_ids=ids[:1, :common], attention_mask=mask[:1, :common],
                              position_ids=torch.arange(common, device=device)[None], use_cache=True)
                past = getattr(out, cache_field())
                past.batch_repeat_interleave(len(unique))
            if ids.shape[1] - 1 > common:
                u_mask = mask[unique, :-1]
                positions = (u_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() derives them for left padding
                out = decoder(input_ids=ids[unique, common:-1], attention_mask=u_mask,
                              position_ids=positions[:, common:], use_cache=True, **{cache_field(): past})
                past = getattr(out, cache_field())
        past.batch_select_indices(torch.tensor([slot[o] for o in owner], dtype=torch.long, device=device))
        self.prefill_tokens += common + len(unique) * (ids.shape[1] - 1 - common) + len(rows)
        return ids, mask, past

    def generate(self, seqs: list[list[int]]) -> list[list[int]]:
        """One turn for every sequence (token ids, without trailing pad / eos)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from s3_ray.agent.turn_cache import after_generate

        if not seqs:
            return []
        check_seqs(seqs)
        t0 = time.perf_counter()
        read_before = self.prefill_tokens
        ids, mask, past, cacheable = self._inputs(seqs)  # on the model's device either way
        prompt_len = ids.shape[1]
        sample = self.cfg.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.cfg.max_new_tokens,
            "do_sample": sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "return_dict_in_generate": True,
        }
        if past is not None:
            kwargs[cache_field()] = past
        first_token: list[float] = []
        criteria = [_first_token_timer(first_token)]
        if self.stop_at_tags:
            criteria.append(_stopping_criteria(self.tokenizer, prompt_len, self._closing))
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        recorder = _logprob_recorder(max(self.cfg.temperature, 1e-3))  # the trainer's temperature floor
        kwargs["logits_processor"] = LogitsProcessorList([recorder])
        if sample:
            kwargs.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = self.model.training
        self.model.eval()
        try:
            # bf16 autocast on a GPU (a trained policy's weights are fp32 masters), none on CPU
            with torch.inference_mode(), inference_autocast(ids.device):
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        finally:
            self.model.train(was_training)
        generated = out.sequences[:, prompt_len:]
        logprobs = recorder.finish(out.sequences, prompt_len)
        results: list[list[int]] = []
        self.last_logprobs = []
        for row, row_lp in zip(generated.tolist(), logprobs):
            cut = stop_length(self.tokenizer, row)
            row = row[:cut] if cut is not None else row
            results.append(strip_trailing(row, self._drop))
            self.last_logprobs.append(row_lp[: len(results[-1])])
        if cacheable:
            self._cache = after_generate(getattr(out, cache_field(), None), ids, mask, seqs, results, generated)
        self.stats.add(len(seqs), sum(len(r) for r in results), time.perf_counter() - t0,
                       prefill_tokens=self.prefill_tokens - read_before,
                       prefill_seconds=(first_token[0] if first_token else time.perf_counter()) - t0)
        return results


class ScriptedPolicy:
    """Writes `script(decoded sequence so far)` as the next turn; deterministic, no model."""

    def __init__(self, tokenizer: Any, script: Callable[[str], str]) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.stats = PolicyStats()

    def generate(self, seqs: list[list[int]]) -> list[list[int]]:
        t0 = time.perf_counter()
        out: list[list[int]] = []
        for seq in seqs:
            turn = self.script(self.tokenizer.decode(list(seq), skip_special_tokens=False))
            if not isinstance(turn, str):
                raise TypeError(f"script returned {type(turn).__name__}, expected the turn text as str")
            out.append(list(self.tokenizer.encode(turn, add_special_tokens=False)))
        self.stats.add(len(seqs), sum(len(o) for o in out), time.perf_counter() - t0)
        return out


def _is_fsdp(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(model, FSDPModule)


def make_policy(model: Any, tokenizer: Any, cfg: SearcherConfig, seed: int = 0,
                weights: Any = None, meta: Any = None) -> Policy:
    """The rollout policy `cfg.backend` names, sampling from `model`'s current weights.

    transformers: an `HFPolicy` over `model` itself (it always sees the latest weights). vllm: a
    `VLLMPolicy` engine built from `cfg.model` (for its architecture and tokenizer files) on
    `model`'s GPU (sharing it with the trainer), loaded with `weights` (plain Hugging Face names:
    a state dict or (name, tensor) pairs), by default `model`'s own state dict. A LoRA or sharded
    model has no plain state dict of its own: pass its merged / gathered weights
    (`s3_ray.rl.model.weight_sync.iter_policy_weights`), or with `cfg.lora_push: adapter` its base
    weights: the engine then serves LoRA and takes the adapter separately. The caller refreshes
    the engine whenever `model` changes. `meta`: (name, dtype, shape) of `weights` in order, which
    vLLM's native weight transfer announces first (`VLLMPolicy.load_weights`).
    """
    if cfg.backend == "transformers":
        return HFPolicy(unwrap(model), tokenizer, cfg)
    if cfg.backend == "vllm":
        from s3_ray.agent.vllm_policy import VLLMPolicy

        bare = unwrap(model)
        lora = hasattr(bare, "peft_config")
        if weights is None:
            if lora or _is_fsdp(bare):
                raise ValueError(f"make_policy: {type(bare).__name__} is a LoRA or sharded model; pass its plain "
                                 "weights (s3_ray.rl.model.weight_sync.iter_policy_weights)")
            weights = bare.state_dict()
        rank = max(int(c.r) for c in bare.peft_config.values()) if lora and cfg.lora_push == "adapter" else 0
        policy = VLLMPolicy(cfg.model, tokenizer, cfg, seed=seed, colocate_with=bare, max_lora_rank=rank)
        policy.load_weights(weights, meta=meta)
        return policy
    raise ValueError(f"searcher.backend must be 'transformers' or 'vllm', got {cfg.backend!r}")
