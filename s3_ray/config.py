"""Typed configuration for every s3-ray job.

One tree (`S3Config`), loaded from YAML and then patched with dotted overrides::

    cfg = load_config("jobs/configs/demo.yaml", ["rollout.max_turns=3", "train.lr=1e-5"])

Every model forbids unknown keys, so a typo fails loudly with the key's full path.
Each component receives its own sub-config, never the root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


# Where faiss keeps Flat/IVF shards (retrieval.faiss_gpu): "auto" = GPUs when the installed faiss
# can use one, True = GPUs required, False = host memory. Resolved by s3_ray.retrieval.faiss_build.
FaissGpu = Literal["auto"] | bool


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the corpus and the QA splits come from. `None` means the embedded default."""

    corpus_path: str | None = Field(None, description="Corpus JSONL ({id, contents} or {id, title, text}).")
    train_path: str | None = Field(None, description="Training QA JSONL ({id, question, golden_answers}).")
    dev_path: str | None = None
    test_path: str | None = None
    train_limit: int | None = Field(None, ge=1, description="Use at most this many training questions.")
    test_limit: int | None = Field(None, ge=1, description="Use at most this many dev or test questions.")


class RetrievalConfig(_Strict):
    """Index build and search settings. Build-time fields go into the index manifest; search-time
    fields (`hnsw_ef_search`, `ivf_nprobe`, `refine_k_factor`, `rrf_k`, `fusion_depth`, `faiss_gpu`) do not."""

    backend: Literal["bm25", "dense", "hybrid"] = "bm25"
    index_dir: str = Field("runs/index", description="Where build_index writes and the retriever reads.")
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)
    bm25_impl: Literal["bm25s", "pyserini"] = Field("bm25s", description="pyserini needs the `sparse` extra + Java 21.")
    max_batch: int = Field(256, ge=1, description="Largest batch of queries one request may carry.")
    # dense
    encoder: str = Field("minilm-l6", description="Registered encoder name, sentence-transformers folder, or HF encoder.")
    pooling: Literal["auto", "mean", "cls"] = Field("auto", description="auto: from the encoder family.")
    query_prefix: str | None = Field(None, description="None: from the encoder family (e5 'query: ').")
    passage_prefix: str | None = Field(None, description="None: from the encoder family (e5 'passage: ').")
    max_length: int = Field(256, ge=8, description="Encoder token limit per text.")
    encode_batch_size: int = Field(64, ge=1)
    index_type: Literal["flat", "hnsw", "ivfpq"] = "flat"
    num_shards: int = Field(1, ge=1, description="faiss indexes over row ranges, merged at query time.")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(64, ge=1)
    ivf_nlist: int = Field(1024, ge=1, description="IVF cells; each shard needs at least this many passages.")
    ivf_nprobe: int = Field(16, ge=1)
    pq_m: int = Field(48, ge=1, description="PQ sub-quantizers; must divide the embedding dim.")
    pq_nbits: int = Field(8, ge=1, le=16)
    pq_refine: Literal["none", "sq8", "fp16", "mmap"] = Field(
        "none", description="ivfpq: re-rank the best PQ candidates with stored vectors (faiss refine): sq8 / fp16 "
        "copies in memory, or mmap = the exact fp32 vectors memory-mapped from the index file.")
    opq: bool = Field(False, description="ivfpq: learn an OPQ rotation before PQ (better codes, slower build).")
    refine_k_factor: int = Field(8, ge=1, description="ivfpq with pq_refine: re-rank k x this many PQ candidates.")
    replica_shards: int = Field(
        1, ge=1, description="Cut the corpus into this many shard indexes, each served by its own Serve replicas; "
        "a front deployment fans every query out and merges the top-k (docs/retrieval.md).")
    faiss_gpu: FaissGpu = Field("auto", description="Flat/IVF shards on GPUs: auto = when faiss-gpu sees one; "
                                "true = required (error otherwise); false = host memory. See docs/retrieval.md.")
    # hybrid
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank fusion constant.")
    fusion_depth: int = Field(50, ge=1, description="Hits fetched from each retriever before fusion.")

    @model_validator(mode="after")
    def _ivfpq_only(self) -> "RetrievalConfig":
        if self.index_type != "ivfpq":
            for key, default in (("pq_refine", "none"), ("opq", False)):
                if getattr(self, key) != default:
                    raise ValueError(f"retrieval.{key}={getattr(self, key)!r} applies to index_type ivfpq only, "
                                     f"index_type is {self.index_type!r}")
        if self.replica_shards > 1 and self.bm25_impl != "bm25s" and self.backend != "dense":
            raise ValueError("retrieval.replica_shards > 1 needs bm25_impl bm25s (sharded BM25 with corpus-wide "
                             "statistics); pyserini indexes are not sharded")
        return self


class GeneratorConfig(_Strict):
    """The frozen answer model: in-process transformers, a vLLM engine, or an OpenAI-compatible server."""

    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="openai: any chat-completions server (vLLM, Ray Serve LLM, hosted APIs)."
    )
    model: str = Field("smollm2-135m-instruct", description="A registered name, a local HF folder or a hub id.")
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(8, ge=1)
    max_context_tokens: int = Field(768, ge=32, description="Passages are cut to fit this many tokens.")
    num_threads: int = Field(1, ge=1, description="torch threads inside one generator replica.")
    cache_path: str | None = Field("runs/cache/generator.sqlite", description="Response cache; null disables it.")
    temperature: float = Field(0.0, ge=0, description="0 is greedy; the reward assumes a deterministic generator.")
    # openai backend
    base_url: str | None = Field(None, description="OpenAI-compatible server root, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (may be unset).")
    request_timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx and connection errors (exponential backoff).")
    max_concurrency: int = Field(16, ge=1, description="Requests in flight at once against the server.")
    # vllm backend
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM's share of GPU memory.")


class SearcherConfig(_Strict):
    """The policy LLM that writes queries and selects documents."""

    model: str = Field("smollm2-135m-instruct", description="A registered name, a local HF folder or a hub id.")
    max_new_tokens: int = Field(64, ge=4, description="Token budget of one searcher turn.")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_prompt_tokens: int = Field(1536, ge=64, description="Longer rolling contexts are left-truncated.")
    num_threads: int = Field(2, ge=1)
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Rollout engine; vllm (GPU extra) gets the trainer's weights after every step.")
    gpu_memory_utilization: float = Field(
        0.4, gt=0, le=1, description="Share of its GPU's memory each worker's vLLM rollout engine takes (weights, KV "
        "cache); the trainer on that GPU keeps the rest, checked when the engine starts.")
    lora_push: Literal["adapter", "merged"] = Field(
        "adapter", description="LoRA runs on vllm: push only the adapter (the engine serves LoRA) or merged full "
        "weights after every step.")


class RolloutConfig(_Strict):
    """Search budgets. "8-3-3" in the paper is top_k=8, keep_per_turn=3, max_turns=3."""

    init_k: int = Field(3, ge=0, description="Naive-RAG documents shown before the first turn.")
    top_k: int = Field(3, ge=1, description="Documents retrieved per query.")
    keep_per_turn: int = Field(2, ge=0, description="At most this many selected documents kept per turn.")
    max_turns: int = Field(2, ge=0, description="Retrieval calls per episode (generations <= max_turns + 1).")
    keep_unselected: bool = Field(
        True, description="A block the searcher did not annotate keeps its top keep_per_turn documents."
    )


class RewardConfig(_Strict):
    baseline: str = Field("naive_rag", description="Context method whose accuracy is subtracted (Gain Beyond <baseline>).")
    add_accuracy: bool = Field(False, description="s3's extra term: reward = GBR + GenAcc.")
    use_judge: bool = Field(False, description="Ask the generator to judge answers the span check rejects.")
    metric: Literal["genacc", "answer_logprob", "mixed"] = Field(
        "genacc", description="What the gain is measured in. genacc: s3's 0/1 generation accuracy; answer_logprob: "
        "the frozen generator's mean token log-likelihood of the gold answer (best alias), dense, so any two "
        "contexts differ; mixed: the GenAcc gain plus logprob_weight times the log-likelihood gain. Each is the "
        "searcher's context minus naive RAG's.")
    logprob_weight: float = Field(
        0.1, ge=0, description="mixed only: weight of the log-likelihood gain (nats per token) beside the GenAcc gain.")


class TrainConfig(_Strict):
    algorithm: Literal["grpo", "ppo", "rloo"] = Field(
        "grpo", description="grpo/rloo: group-relative, no critic; ppo: value head + GAE (the paper's setting).")
    steps: int = Field(6, ge=0)
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
                           "rest questions that keep giving flat groups (s3_ray/rl/curriculum.py).")
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
        return self


class EvalDatasetConfig(_Strict):
    """One evaluation set (see `s3_ray.data.datasets`)."""

    name: str = Field(..., min_length=1, description="Label in the report; the FlashRAG config for format hf.")
    path: str = Field(..., min_length=1, description="File (flashrag/parquet/mirage) or split name (hf).")
    format: Literal["auto", "flashrag", "parquet", "mirage", "hf"] = "auto"
    tasks: list[str] | None = Field(None, description="MIRAGE tasks to keep (None: all).")


class EvalConfig(_Strict):
    split: Literal["train", "dev", "test"] = "test"
    methods: list[str] = Field(default_factory=lambda: ["naive_rag", "s3"])
    checkpoints: dict[str, str] = Field(default_factory=dict, description="Method label -> searcher checkpoint.")
    datasets: list[EvalDatasetConfig] = Field(
        default_factory=list, description="Evaluation sets; empty: the `split` of `data` (embedded by default).")
    limit: int | None = Field(None, ge=1, description="Seeded sample of at most this many questions per set (paper: 3000).")
    sample_seed: int = Field(0, description="Seed of that sample.")
    baseline_model: str | None = Field(None, description="LM of the cot/rewrite/ircot/search_r1 methods; None: searcher.model.")
    baseline_max_new_tokens: int = Field(64, ge=1, description="Token budget of one baseline LM call.")
    baseline_max_prompt_tokens: int = Field(2048, ge=64, description="Baseline prompts are left-truncated to this.")
    rewrite_k: int = Field(3, ge=1, description="Documents for the rewritten query (DeepRetrieval-style).")
    ircot_steps: int = Field(4, ge=0, description="IRCoT reasoning steps after the initial retrieval.")
    ircot_k: int = Field(3, ge=1, description="Documents per IRCoT retrieval.")
    search_r1_turns: int = Field(4, ge=1, description="Search-R1 generations per question.")
    search_r1_k: int = Field(3, ge=1, description="Documents per Search-R1 search.")
    context_tokenizer: str | None = Field(
        None, description="Model name whose tokenizer counts context tokens in the report; None: words.")


class SweepConfig(_Strict):
    mode: Literal["inference", "train"] = Field(
        "inference", description="inference: budgets of a fixed searcher; train: training settings, with ASHA.")
    scheduler: Literal["fifo", "asha"] = Field("fifo", description="asha stops weak training trials early.")
    asha_grace_period: int = Field(1, ge=1, description="Training steps every trial runs before ASHA may stop it.")
    asha_reduction_factor: int = Field(2, ge=2)
    num_samples: int = Field(1, ge=1, description="Repeats of the grid (seeds differ per repeat).")
    param_space: dict[str, list[Any]] = Field(
        default_factory=lambda: {"rollout.top_k": [2, 3], "rollout.max_turns": [1, 2]},
        description="Dotted config key -> grid values.",
    )
    max_concurrent: int = Field(1, ge=1)
    metric: str = "genacc"
    metric_mode: Literal["max", "min"] = "max"


class ServeConfig(_Strict):
    host: str = Field("127.0.0.1", description="HTTP bind address; 0.0.0.0 exposes the apps to the network.")
    port: int = Field(8000, ge=1, le=65535)
    auth_token_env: str | None = Field(
        None, description="Environment variable holding a bearer token; when set, HTTP calls must send it.")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Larger HTTP bodies are refused with 413.")
    max_text_chars: int = Field(4096, ge=16, description="Longest query or question accepted over HTTP.")
    retriever_replicas: int = Field(1, ge=1)
    retriever_cpus: float = Field(0.25, gt=0)
    retriever_gpus: float = Field(0.0, ge=0, description="GPUs per retriever replica (dense encoder, faiss GPU).")
    retriever_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per retriever replica (and per shard replica), e.g. "
        "{retriever_node: 0.01} to place them on cluster.yaml's cpu_retriever nodes.")
    generator_replicas: int = Field(1, ge=1)
    generator_cpus: float = Field(0.5, gt=0)
    generator_gpus: float = Field(0.0, ge=0, description="GPUs per generator replica (transformers/vLLM on GPU).")
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(16, ge=1, description="Most concurrent retriever or generator calls merged into one.")
    shard_timeout_s: float = Field(30.0, gt=0, description="Sharded retriever: one shard call's time limit.")
    shard_retries: int = Field(
        2, ge=0, description="Sharded retriever: retries of a failed shard call (Serve routes each to a healthy "
                             "replica of that shard); then the query fails, never returning a partial top-k.")
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    health_check_period_s: float = Field(10.0, gt=0, description="How often Serve probes each replica.")
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(
        20.0, ge=0, description="On shutdown or redeploy, in-flight requests get this long to finish.")
    copilot_replicas: int = Field(1, ge=1, description="Replicas of the searcher (copilot) app.")
    copilot_cpus: float = Field(0.5, gt=0, description="CPUs reserved per copilot replica.")
    copilot_gpus: float = Field(0.0, ge=0, description="GPUs reserved per copilot (searcher) replica.")
    copilot_max_batch_size: int = Field(8, ge=1, description="Most concurrent searches merged into one rollout.")
    copilot_batch_wait_timeout_s: float = Field(
        0.05, ge=0, description="How long a copilot replica waits for more requests to join a rollout."
    )


class WandbConfig(_Strict):
    enabled: bool = True
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "s3-ray"


class S3Config(_Strict):
    run_dir: str = Field("runs/demo", description="Every artifact of a run lands below this folder.")
    seed: int = 0
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    generator: GeneratorConfig = GeneratorConfig()
    searcher: SearcherConfig = SearcherConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    sweep: SweepConfig = SweepConfig()
    serve: ServeConfig = ServeConfig()
    wandb: WandbConfig = WandbConfig()

    @model_validator(mode="after")
    def _budgets_fit(self) -> "S3Config":
        if self.rollout.keep_per_turn > self.rollout.top_k:
            raise ValueError("rollout.keep_per_turn must not exceed rollout.top_k")
        return self

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> "S3Config":
        """A copy with dotted keys replaced (`{"rollout.top_k": 5}` or `["rollout.top_k=5"]`)."""
        data = self.model_dump()
        pairs = _parse_overrides(overrides) if isinstance(overrides, list) else overrides
        for key, value in pairs.items():
            _set_dotted(data, key, value)
        return _validate(data, source="overrides")

    def absolute(self, base: str | os.PathLike[str] | None = None) -> "S3Config":
        """A copy whose relative file paths are resolved against `base` (default: the cwd).

        Ray workers and Serve replicas run in other working directories, so a job resolves its
        paths once, in the driver, before handing the config on.
        """
        root = Path(base or os.getcwd())

        def fix(p: str | None) -> str | None:
            if p is None:
                return None
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else root / q)

        return self.with_overrides({
            "run_dir": fix(self.run_dir),
            "retrieval.index_dir": fix(self.retrieval.index_dir),
            "generator.cache_path": fix(self.generator.cache_path),
            **{f"data.{k}": fix(getattr(self.data, k)) for k in ("corpus_path", "train_path", "dev_path", "test_path")},
        })

    def path(self, *parts: str) -> Path:
        """A path below run_dir."""
        return Path(self.run_dir).joinpath(*parts)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} (in override {key!r})")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"unknown config key {key!r}")
    node[parts[-1]] = value


def _validate(data: dict[str, Any], source: str) -> S3Config:
    try:
        return S3Config.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "<root>"
            msg = "unknown config key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"{loc}: {msg}")
        raise ConfigError(f"invalid config ({source}):\n  " + "\n  ".join(lines)) from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> S3Config:
    """Read a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded or {}
    cfg = _validate(data, source=str(path) if path else "defaults")
    return cfg.with_overrides(overrides) if overrides else cfg


def load_job_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> S3Config:
    """`load_config` with every relative path resolved against the current directory (for jobs)."""
    return load_config(path, overrides).absolute()
