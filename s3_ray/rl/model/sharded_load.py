"""Loading the searcher straight into FSDP shards (`train.parallel: fsdp`): no rank ever holds the
whole model on its device.

1. every rank builds the model on the meta device (no storage; the few non-persistent buffers,
   such as rotary frequencies, are computed for real on the CPU: they are not in any checkpoint);
2. `fully_shard` cuts it into per-rank shards (`s3_ray.rl.model.sharding.shard_model`) and the
   shards alone get storage on the rank's device (`Module.to_empty`);
3. rank 0 reads the Hugging Face weights on its CPU and `set_model_state_dict(...,
   broadcast_from_rank0=True)` sends them one tensor at a time: every rank keeps its slice of
   each tensor and frees the rest before the next one arrives.

Per rank the device then holds 1/world of the float32 master weights plus one whole tensor in
flight (the largest is the embedding), instead of the whole model. The frozen KL reference is
a second sharded model whose shards are copied locally from the policy's (`sharded_copy`, cast
to the frozen dtype, no communication), and the unsharded *rollout copy* that the transformers
backend samples from (`rollout_copy`) is filled one gathered tensor at a time; a vLLM engine
(`searcher.backend: vllm`) holds its own weights, so that run builds no rollout copy at all.

Functions that touch shards are collectives: every rank calls them, in the same order.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def attention_for(dtype: Any) -> str:
    """The attention kernel `load_causal_lm` would pick for weights in `dtype` (FlashAttention-2
    computes in fp16/bf16 only, so float32 weights get SDPA)."""
    from s3_ray.models.registry import attention_kwargs

    attn = attention_kwargs()["attn_implementation"]
    return "sdpa" if attn == "flash_attention_2" and dtype == torch.float32 else attn


def empty_model(config: Any, dtype: Any, attn_implementation: str) -> nn.Module:
    """The HF causal LM for `config` with every parameter on the meta device in `dtype` (nothing
    allocated) and its buffers computed on the CPU (float32 rotary frequencies: rounding them
    would shift every position's angle). `config` is not modified."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=dtype,
                                                 attn_implementation=attn_implementation)
    # meta registration makes a new Parameter per assignment, which unties tied weights (embeddings
    # and head): tie them again, as one Parameter, before anything is sharded or allocated
    model.tie_weights()
    return model


def materialise(model: nn.Module, device: Any) -> nn.Module:
    """Give a meta-built (and possibly sharded) `model` storage on `device`: uninitialised
    parameters (each rank's shards only, once sharded), and its CPU-computed buffers copied over."""
    from s3_ray.rl.model.sharding import is_sharded

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    if not is_sharded(model):  # meta -> real makes a new Parameter per module: tie them again
        model.tie_weights()
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return model


def load_tokenizer(path: str) -> Any:
    """The tokenizer the way `load_causal_lm` prepares it (left padding, a pad token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _generation_config(path: str) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:  # a folder without generation_config.json
        return None


def load_sharded(name: str, device: Any, rank: int, dtype: Any = torch.float32,
                 prepare: Any = None) -> tuple[nn.Module, Any]:
    """(FSDP-sharded model, tokenizer) for the model `name` (a registered name, a folder or a hub
    id), its shards on `device` in `dtype`; only rank 0 reads the weights, on its CPU.

    `prepare(model)` runs on the meta-built model before it is sharded (gradient checkpointing).
    Collective: every rank of the default process group calls it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig

    from s3_ray.models import load_causal_lm, resolve_model
    from s3_ray.rl.model.sharding import shard_model

    path = resolve_model(name)
    model = empty_model(AutoConfig.from_pretrained(path), dtype, attention_for(dtype))
    if prepare is not None:
        prepare(model)
    shard_model(model, device=device)
    materialise(model, device)
    full: dict[str, torch.Tensor] = {}
    if rank == 0:  # the weights in the dtype they are stored in; each shard casts its slice
        plain, _ = load_causal_lm(path, device="cpu", dtype="auto", for_training=True)
        full = plain.state_dict()
        del plain
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    model.generation_config = _generation_config(path) or model.generation_config
    model.train()
    return model, load_tokenizer(path)


@torch.no_grad()
def sharded_copy(model: nn.Module, dtype: Any, device: Any) -> nn.Module:
    """A frozen FSDP-sharded copy of the sharded `model` in `dtype` (the KL reference), built from
    its shards: each rank casts its own slices, nothing is gathered or sent. A float32 copy
    computes under the same mixed precision as the policy, a bf16 one in its own dtype."""
    from s3_ray.rl.model.sharding import is_sharded_tensor, shard_model

    out = empty_model(model.config, dtype, model.config._attn_implementation)
    shard_model(out, trainable=False, mixed_precision=None if dtype == torch.float32 else False, device=device)
    materialise(out, device)
    source = model.state_dict()
    for name, target in out.state_dict().items():
        src = source[name]
        if is_sharded_tensor(target):
            target.to_local().copy_(src.to_local())
        else:
            target.copy_(src)
    out.generation_config = copy.deepcopy(model.generation_config)
    return out.eval().requires_grad_(False)


def rollout_copy(model: nn.Module, dtype: Any, device: Any) -> nn.Module:
    """An unsharded frozen copy of the sharded `model` in `dtype` on `device`, for the transformers
    backend to sample rollouts from (ranks generate independently, never in lockstep on shards):
    allocated empty, then filled one gathered tensor at a time (`weight_sync.refresh_copy`, which
    keeps it current after every update). Collective."""
    from s3_ray.rl.model.weight_sync import refresh_copy

    out = materialise(empty_model(model.config, dtype, attention_for(dtype)), device)
    out.generation_config = copy.deepcopy(model.generation_config)
    refresh_copy(out, model)
    return out.eval().requires_grad_(False)
