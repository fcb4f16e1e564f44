"""The `train` config section: the RL algorithm, its batch, optimiser, parallelism, warm-up,
dynamic sampling and collapse guard."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from s3_ray.config.base import StrictModel


class AsyncConfig(StrictModel):
    """`train.async`: rollout workers that keep generating while the trainer updates
    (s3_ray/rl/loop/group_buffer.py, s3_ray/rl/loop/async_trainer.py). `max_staleness: 0` (the
    default) is the synchronous trainer, unchanged."""

    max_staleness: int = Field(
        0, ge=0, description="S: no group trains more than S policy versions after the one that began it. Rollout "
                             "workers may run ahead of the trainer by S steps (generated + in-flight groups <= "
                             "(S + step) x questions_per_step); 0 = the synchronous trainer.")
    rollout_workers: int = Field(2, ge=1, description="Rollout worker actors, each with its own rollout engine.")
    worker_cpus: float = Field(1.0, gt=0, description="CPUs per rollout worker actor.")
    worker_gpus: float = Field(0.0, ge=0, description="GPUs per rollout worker actor.")
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per rollout worker (e.g. {rollout_node: 0.01}).")
    correction: Literal["tis", "decoupled"] = Field(
        "tis", description="Off-policy correction of tokens sampled by an older policy. tis: truncated importance "
                           "sampling, each token's policy-gradient term times min(pi_old / pi_behaviour, tis_cap); "
                           "decoupled: decoupled PPO (AReaL), the clip taken around the proximal policy (the policy "
                           "before this update) and pi_proximal / pi_behaviour weighting each token, tokens whose "
                           "weight exceeds tis_cap masked out.")
    tis_cap: float = Field(2.0, ge=1.0, description="C: the cap of the per-token importance weight.")

    @property
    def enabled(self) -> bool:
        return self.max_staleness > 0


class TrainConfig(StrictModel):
    # `async` is a Python keyword: the field is `async_`, read and written as "async"
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    algorithm: Literal["grpo", "ppo", "rloo"] = Field(
        "grpo", description="grpo/rloo: group-relative, no critic; ppo: value head + GAE (the paper's setting).")
    steps: int = Field(6, ge=0)
    max_wall_s: float | None = Field(
        None, gt=0, description="Wall-time budget of the RL steps: training stops (with a checkpoint) after the first "
                                "step that ends this many seconds after this process began its first RL step (a "
                                "resumed run counts afresh). None: train.steps alone decides.")
    questions_per_step: int = Field(
        4, ge=1, description="Questions per RL step over all workers (the global batch; each worker takes its share).")
    group_size: int = Field(2, ge=1, description="Trajectories per question (GRPO groups).")
    lr: float = Field(1e-5, gt=0)
    kl_coef: float = Field(0.01, ge=0)
    kl_target: float | None = Field(
        None, gt=0, description="Adaptive KL: steer kl_coef so the measured KL tracks this (None: fixed coefficient).")
    kl_horizon: int = Field(10, ge=1, description="Steps over which the adaptive KL controller reacts.")
    clip_ratio: float = Field(0.2, gt=0)
    entropy_coef: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    num_workers: int = Field(1, ge=1)
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every worker holds the whole policy; fsdp: weights, gradients and optimizer state "
                           "sharded over the workers (FSDP2; on GPU fp32 master weights, bf16 compute).")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(
        None, ge=0, description="GPUs per Train worker; None: 1 when the submitting process sees CUDA, else 0 "
                                "(set it on a cluster whose head node has no GPU).")
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per Train worker (and per training sweep trial), "
        "e.g. {train_node: 0.01} to place them on cluster.yaml's gpu_train nodes.")
    storage_path: str | None = Field(
        None, description="Where Ray Train keeps the run's checkpoints: s3://..., gs://... or a folder every node "
        "mounts (NFS); None: <run_dir>/ray, which only works on one node.")
    checkpoint_every: int = Field(2, ge=1)
    keep_checkpoints: int | None = Field(
        None, ge=1, description="Checkpoints kept on disk: this many with the highest training reward, plus the "
                                "latest (for resume) when it is not among them. None: all. The warm-up "
                                "checkpoint (reward NaN) is the first to go.")
    cpu_compute: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="Training forwards on CPU: fp32 (exact), bf16 autocast over fp32 master weights, or "
        "auto (bf16 where the CPU multiplies bf16 natively: avx512_bf16 or AMX). Log-softmax stays fp32.")
    min_signal_groups: int = Field(
        0, ge=0, description="Dynamic sampling: a step samples rounds of questions_per_step questions until the "
                             "workers hold this many groups whose rewards differ (or max_sample_rounds), and only "
                             "those groups enter the update. 0: one round, every group enters the update.")
    max_sample_rounds: int = Field(4, ge=1, description="Most sampling rounds of one step (dynamic sampling).")
    curriculum: bool = Field(
        False, description="Prefer training questions whose recent success rate is strictly between 0 and 1; "
                           "rest questions that keep giving flat groups (s3_ray/rl/loop/curriculum.py).")
    curriculum_window: int = Field(8, ge=1, description="Recent rollouts per question the curriculum remembers.")
    curriculum_patience: int = Field(2, ge=1, description="Flat groups in a row before a question rests.")
    curriculum_rest: int = Field(4, ge=0, description="Steps a flat question rests before it is retried.")
    curriculum_focus: float = Field(
        0.5, ge=0, le=1, description="Largest share of a round's questions drawn from the learnable ones.")
    keep_rag_solved_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of the training questions naive RAG already answers that stay in "
                                     "training ('do no harm' questions: stopping at once is right there). 0 is "
                                     "s3's filter (all dropped), 1 keeps them all.")
    warmup_steps: int = Field(0, ge=0, description="Supervised format warm-up steps before RL (0 = none).")
    warmup_batch: int = Field(4, ge=1, description="Questions per warm-up step over all workers.")
    warmup_lr: float = Field(5e-5, gt=0)
    warmup_stop_fraction: float = Field(
        0.25, ge=0, le=1, description="Share of warm-up demonstrations that stop at once (keep documents, complete). "
                                      "Greedy decoding picks the likelier first move, so a share near the search "
                                      "share leaves a warm-up that may stop without searching.")
    warmup_follow_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of warm-up search turns that query a name read in the initial "
                                     "documents (label-free second-hop demonstrations; 0 = query the question).")
    warmup_follow_docs: int | None = Field(
        None, ge=1, description="Follow demonstrations query a name read in the first this-many initial documents "
                                "(the top-ranked ones are about the question's own entity); None: all of them.")
    micro_batch: int = Field(2, ge=1, description="Trajectories per forward/backward; gradients accumulate over the step.")
    ppo_epochs: int = Field(
        1, ge=1, description="Optimiser passes over each step's batch; 1 is on-policy (without a critic the "
                             "ratio's old log-probs are then the same forward pass's, saving a pass).")
    kl_estimator: Literal["k1", "k3"] = Field(
        "k3", description="KL(policy || reference) estimator per token: k1 = log ratio, k3 = Schulman's "
                          "unbiased, always non-negative estimator.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the policy's parameters.")
    value_lr: float | None = Field(None, gt=0, description="PPO value head's learning rate; None: 10 x lr.")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the PPO value loss.")
    value_clip: float = Field(0.5, gt=0, description="PPO value clipping range around the old values.")
    max_seq_len: int | None = Field(
        None, ge=2, description="Longest prompt + response the update feeds; longer prompts lose their oldest "
                                "tokens (a response that alone does not fit is an error). None: no limit.")
    logits_chunk: int = Field(
        1024, ge=1, description="Tokens whose vocabulary logits exist at once when the update scores tokens: "
                                "log-probs and entropy are taken from the hidden states this many tokens at a "
                                "time, the backward recomputing each chunk's logits, so memory grows with the "
                                "chunk, not with rows x length x vocabulary.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (less memory, slower).")
    share_prefix: bool = Field(
        True, description="Update forwards read the tokens all rows of a micro-batch share (a group's prompt) once "
                          "and reuse their KV cache (same gradients up to float rounding). Off under FSDP, with "
                          "gradient checkpointing and for PPO's value head.")
    lora_rank: int = Field(0, ge=0, description="LoRA adapter rank (peft); 0 trains every weight.")
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] | None = Field(
        None, description="Module names LoRA wraps; None: every linear layer but the output head.")
    async_: AsyncConfig = Field(
        default_factory=AsyncConfig, alias="async",
        description="Asynchronous RL: rollout workers, bounded staleness, off-policy correction.")
    # collapse guard
    guard_malformed_rate: float | None = Field(
        0.6, gt=0, le=1, description="Stop when this share of searcher turns is malformed (None: off).")
    guard_kl: float | None = Field(None, gt=0, description="Stop when the KL to the reference exceeds this (None: off).")
    guard_patience: int = Field(2, ge=1, description="Consecutive bad steps before the guard stops the run.")

    @model_validator(mode="after")
    def _parallel_fits(self) -> "TrainConfig":
        for key in ("questions_per_step", "warmup_batch"):
            if getattr(self, key) % self.num_workers:
                raise ValueError(f"train.{key}={getattr(self, key)} is the batch over all workers: it must be a "
                                 f"multiple of train.num_workers={self.num_workers}")
        if self.min_signal_groups > 0 and self.group_size < 2:
            raise ValueError(f"train.min_signal_groups={self.min_signal_groups} needs train.group_size >= 2: a group "
                             "of one rollout never has rewards that differ")
        if self.parallel == "fsdp" and self.lora_rank > 0:
            raise ValueError("train.parallel=fsdp does not combine with train.lora_rank > 0: a LoRA run trains a few "
                             "MB of adapter over frozen base weights, which DDP replicates cheaply; use "
                             "train.parallel=ddp with LoRA, or train.lora_rank=0 with FSDP")
        if self.async_.enabled and (self.num_workers != 1 or self.algorithm == "ppo"):
            raise ValueError(f"train.async.max_staleness={self.async_.max_staleness} trains in one process without a "
                             f"critic: it needs train.num_workers=1 (got {self.num_workers}) and train.algorithm grpo "
                             f"or rloo (got {self.algorithm}); the rollout workers are train.async.rollout_workers")
        return self
