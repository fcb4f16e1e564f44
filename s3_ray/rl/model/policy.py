"""The searcher being trained, from load to save: one object owns the policy's whole life.

`SearcherPolicy.load` builds, in order:

1. the plain HF model on this worker's device in float32 master weights (on a GPU the training
   forwards compute in bf16 under autocast: `s3_ray.rl.model.precision`), with gradient
   checkpointing when configured;
2. a LoRA adapter (`train.lora_rank > 0`; peft), so only the adapter trains;
3. the KL reference (`train.kl_coef > 0`): a frozen copy (bf16 on a GPU), or with LoRA the same
   model with its adapter switched off (no second copy of the weights);
4. the wrapper for several workers: DDP (`train.parallel: ddp`).

With FSDP (`train.parallel: fsdp`) no rank holds the whole model on its device: the policy is built
on the meta device, sharded, and filled from rank 0's CPU read of the weights; the KL reference is
a sharded frozen copy made from the shards; an unsharded bf16 (on a GPU) *rollout copy* is built
only for the transformers backend (rollouts never run on shards: ranks would have to generate in
lockstep), none where a vLLM engine holds the rollout weights (`s3_ray.rl.model.sharded_load`).

After a format warm-up, `rebase_after_warmup` makes the warmed-up policy the reference RL is held
near (with LoRA: the warm-up adapter is merged into the base and a fresh adapter attached).
`save` / `restore` write and read a checkpoint: the plain layout of one process or DDP, or the
sharded one of FSDP, which every rank writes its own part of (`s3_ray.rl.model.checkpoint`).
Functions that touch a sharded model are collectives: every rank calls them, in the same order.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from s3_ray.config import S3Config, TrainConfig
from s3_ray.models import unwrap
from s3_ray.rl.model.precision import Precision, configure_cpu_compute, configure_device, precision_for


def build_policy(plain: Any, tc: TrainConfig, frozen_dtype: Any = None) -> tuple[Any, Any]:
    """(policy, KL reference or None) around a plain HF model: with LoRA the reference is the
    policy with its adapter off (no second copy of the weights) and the frozen base is held in
    `frozen_dtype`, otherwise the reference is a frozen copy in `frozen_dtype` (default: `plain`'s own)."""
    from s3_ray.rl.model.lora import AdapterOffReference, apply_lora

    policy = apply_lora(plain, tc, base_dtype=frozen_dtype) if tc.lora_rank > 0 else plain
    ref = None
    if tc.kl_coef > 0:
        ref = AdapterOffReference(policy) if tc.lora_rank > 0 else frozen_copy(plain, frozen_dtype)
    return policy, ref


def frozen_copy(plain: Any, dtype: Any = None) -> Any:
    """A frozen copy of the unsharded `plain` in `dtype` (default: its own), on its device: the KL
    reference, or the rollout copy that samples while the trained policy is FSDP-sharded (whose
    weights `s3_ray.rl.model.weight_sync.refresh_copy` refreshes after every update).

    Built tensor by tensor: each parameter is cast straight into the copy, so the peak is the
    copy plus one tensor (a deep copy cast afterwards first holds a second float32 model). Tied
    weights stay tied. Buffers keep their dtype: rotary frequencies rounded to bf16 would shift
    every position's angle (`Module.to(bf16)` would round them).
    """
    import torch

    memo: dict[int, Any] = {}
    with torch.no_grad():
        for p in plain.parameters():  # a tied Parameter appears once
            cast = dtype if dtype is not None and p.is_floating_point() else p.dtype
            memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype=cast, copy=True), requires_grad=False)
        for b in plain.buffers():
            memo[id(b)] = b.detach().clone()
        out = copy.deepcopy(plain, memo)
    return out.eval().requires_grad_(False)


def shard_for_training(policy: Any, ref: Any) -> tuple[Any, Any]:
    """FSDP-shard the policy and its frozen KL reference in place (`train.parallel: fsdp`); a
    bf16 reference computes in its own dtype (mixed precision needs fp32 master weights)."""
    import torch

    from s3_ray.rl.model.sharding import shard_model

    shard_model(policy)
    if ref is not None:
        fp32 = next(ref.parameters()).dtype == torch.float32
        shard_model(ref, trainable=False, mixed_precision=None if fp32 else False)
    return policy, ref


def wrap_for_workers(policy: Any, world: int) -> Any:
    """DistributedDataParallel over the process group when there are several workers (gloo on
    CPU, NCCL on a GPU, each worker on its own device), else the policy itself."""
    if world <= 1:
        return policy
    from torch.nn.parallel import DistributedDataParallel

    device = next(policy.parameters()).device
    if device.type == "cuda":
        return DistributedDataParallel(policy, device_ids=[device], output_device=device)
    return DistributedDataParallel(policy)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass instead of keeping them (less memory, slower).

    Every training forward of this package already passes `use_cache=False` (a KV cache is
    useless there and conflicts with recomputation); generation in eval mode is unaffected,
    because checkpointing only acts while the model is training. Non-reentrant checkpointing is
    used so gradients reach LoRA adapters although the frozen embeddings' outputs need no grad.
    """
    bare = unwrap(model)
    if hasattr(bare, "peft_config"):
        bare = bare.get_base_model()
    if not getattr(bare, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(bare).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(bare, "activation_checkpointing_enable"):  # transformers >= 5.x name
        bare.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        bare.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class SearcherPolicy:
    """The trained policy (`model`, wrapped or sharded), its KL reference (`ref`), the unsharded
    rollout copy (`rollout_copy`, FSDP with the transformers backend only) and the tokenizer.
    `precision` says which dtypes they are held in (`s3_ray.rl.model.precision`)."""

    def __init__(self, cfg: S3Config, model: Any, ref: Any, tokenizer: Any, rollout_copy: Any = None,
                 world: int = 1, rank: int = 0, precision: Precision | None = None) -> None:
        self.cfg = cfg
        self.precision = precision if precision is not None else precision_for("cpu")
        self.model = model
        self.ref = ref
        self.tokenizer = tokenizer
        self.rollout_copy = rollout_copy
        self.world = world
        self.rank = rank

    @classmethod
    def load(cls, cfg: S3Config, name: str | None = None, device: Any = None, world: int = 1,
             rank: int = 0) -> SearcherPolicy:
        """Load `name` (default `cfg.searcher.model`) on `device` (default: the first GPU, else
        the CPU) in float32 master weights, and build the policy around it."""
        import torch

        from s3_ray.models import load_causal_lm

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        configure_cpu_compute(cfg.train.cpu_compute)
        configure_device(device)  # TF32 on a GPU
        precision = precision_for(device)
        name = name or cfg.searcher.model
        prepare = enable_gradient_checkpointing if cfg.train.gradient_checkpointing else None
        if cfg.train.parallel == "fsdp":
            if cfg.searcher.num_threads:
                torch.set_num_threads(cfg.searcher.num_threads)
            policy = cls(cfg, None, None, None, world=world, rank=rank, precision=precision)
            policy._load_sharded(name, device, prepare)
            return policy
        plain, tok = load_causal_lm(name, num_threads=cfg.searcher.num_threads,
                                    for_training=True, device=device, dtype=precision.master)
        if prepare is not None:
            prepare(plain)
        policy = cls(cfg, None, None, tok, world=world, rank=rank, precision=precision)
        policy._build(plain)
        return policy

    def _load_sharded(self, name: str, device: Any, prepare: Any) -> None:
        """FSDP: the policy straight into shards, the KL reference from its shards, and a rollout
        copy only for the transformers backend (`s3_ray.rl.model.sharded_load`). Collective."""
        from s3_ray.rl.model.sharded_load import load_sharded, rollout_copy, sharded_copy

        tc = self.cfg.train
        if tc.lora_rank > 0:  # the config refuses it; a LoRA reference would be the adapter-off policy
            raise ValueError("train.parallel=fsdp does not combine with train.lora_rank > 0")
        self.model, self.tokenizer = load_sharded(name, device, self.rank, self.precision.master, prepare)
        if tc.kl_coef > 0:
            self.ref = sharded_copy(self.model, self.precision.frozen, device)
        if self.cfg.searcher.backend == "transformers":
            self.rollout_copy = rollout_copy(self.model, self.precision.frozen, device)

    def _build(self, plain: Any) -> None:
        """Wrap the plain HF model `plain` (one process or DDP): LoRA, KL reference, DDP."""
        tc = self.cfg.train
        frozen = self.precision.frozen
        policy, self.ref = build_policy(plain, tc, frozen)
        self.model = wrap_for_workers(policy, self.world)

    @property
    def bare(self) -> Any:
        """The model inside the DDP wrapper (generation, saving)."""
        return unwrap(self.model)

    @property
    def sharded(self) -> bool:
        from s3_ray.rl.model.sharding import is_sharded

        return is_sharded(self.bare)

    def rebase_after_warmup(self, reference_dir: str | Path | None = None) -> None:
        """Make the warmed-up policy the one RL starts from and the KL term holds it near, and keep
        it as a plain HF folder in `reference_dir` (rank 0): the base a resumed run rebuilds from.

        LoRA: the warm-up adapter is merged into the base and a fresh, zero-initialised adapter is
        attached (so "adapter off" is the warmed-up policy); the caller must then give the trainer
        the new `model` and `ref` (the old parameters are gone). Otherwise the reference takes the
        warmed-up weights (sharded alike under FSDP, so shards copy onto shards). Collective for a
        sharded policy: every rank calls it, with or without a folder.
        """
        from s3_ray.rl.model.lora import merge_lora

        lora = self.cfg.train.lora_rank > 0
        warmed = merge_lora(self.bare) if lora else self.bare
        if not lora and self.ref is not None:
            self.ref.load_state_dict(warmed.state_dict())
        self._save_plain(warmed, reference_dir)
        if lora:
            self._build(warmed)

    def _save_plain(self, plain: Any, folder: str | Path | None) -> None:
        """`plain` as an HF folder with the tokenizer, written by rank 0 (gathered first if sharded)."""
        from s3_ray.rl.model.checkpoint import save_hf_folder
        from s3_ray.rl.model.sharding import full_state_dict, is_sharded

        weights = full_state_dict(plain, keep=self.rank == 0) if is_sharded(plain) else None
        if self.rank == 0 and folder:
            save_hf_folder(folder, plain, weights)
            self.tokenizer.save_pretrained(folder)

    def save(self, path: str | Path, updater: Any, step: int, extra: dict[str, Any]) -> Path | None:
        """Write a checkpoint to `path`; returns it where this rank wrote part of it, else None.

        Unsharded: rank 0 writes the plain layout (None on other ranks). Sharded (FSDP): every rank
        writes its own shards of the weights and optimiser state into the same `path` (storage all
        ranks reach), rank 0 adds the bf16 HF export; every rank gets `path` back. Collective then.
        """
        from s3_ray.rl.model.checkpoint import save_checkpoint
        from s3_ray.rl.model.sharded_checkpoint import save_sharded_checkpoint

        if self.sharded:
            return save_sharded_checkpoint(path, self.bare, updater, step, extra=extra, tokenizer=self.tokenizer)
        if self.rank != 0:
            return None
        return save_checkpoint(path, self.bare, updater, step, extra=extra, tokenizer=self.tokenizer)

    def restore(self, path: str | Path, updater: Any) -> dict[str, Any]:
        """Load a checkpoint's weights (or adapter) and the updater's state; returns the trainer state.
        A sharded checkpoint is read shard by shard (each rank only its own); collective then."""
        from s3_ray.rl.model.checkpoint import load_checkpoint

        return load_checkpoint(Path(path), self.bare, updater)
