"""Config sections of one search episode: data, retrieval, the frozen generator, the searcher, the
search budgets and the reward."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from s3_ray.config.base import FaissGpu, StrictModel


class DataConfig(StrictModel):
    """Where the corpus and the QA splits come from. `None` means the embedded default."""

    corpus_path: str | None = Field(None, description="Corpus JSONL ({id, contents} or {id, title, text}).")
    train_path: str | None = Field(None, description="Training QA JSONL ({id, question, golden_answers}).")
    dev_path: str | None = None
    test_path: str | None = None
    train_limit: int | None = Field(None, ge=1, description="Use at most this many training questions.")
    test_limit: int | None = Field(None, ge=1, description="Use at most this many dev or test questions.")


class RetrievalConfig(StrictModel):
    """Index build and search settings. Build-time fields go into the index manifest; search-time
    fields (`hnsw_ef_search`, `ivf_nprobe`, `refine_k_factor`, `rrf_k`, `fusion_depth`, `faiss_gpu`,
    `faiss_gpu_fp16`) do not."""

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
    encoder_runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: ONNX Runtime on a CPU when installed (the dense extra), else torch; "
                            "torch or onnx to insist (s3_ray/retrieval/onnx_encoder.py).")
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
    faiss_gpu_fp16: bool = Field(
        True, description="Shards on GPUs hold their vectors in fp16 (faiss GpuClonerOptions.useFloat16): half the "
        "GPU memory of fp32 (wiki-18 Flat: 30 GiB instead of 60); false keeps them exact in fp32.")
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


class GeneratorConfig(StrictModel):
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
    tensor_parallel_size: int = Field(
        1, ge=1, description="vllm backend: GPUs one engine splits the model over (vLLM tensor parallelism); each "
        "generator Serve replica then reserves this many GPUs.")

    @model_validator(mode="after")
    def _tensor_parallel_needs_vllm(self) -> "GeneratorConfig":
        if self.tensor_parallel_size > 1 and self.backend != "vllm":
            raise ValueError(f"generator.tensor_parallel_size={self.tensor_parallel_size} needs generator.backend "
                             f"vllm, backend is {self.backend!r}")
        return self


class SearcherConfig(StrictModel):
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
    vllm_sleep_level: Literal[0, 1, 2] = Field(
        1, description="vllm on GPU: the rollout engine sleeps through every policy update and gives its GPU memory "
        "back to the trainer (vLLM sleep mode). 1: weights kept in host memory, KV cache dropped; 2: both "
        "dropped (the next push sends full weights again); 0: the engine holds its share throughout.")
    vllm_weight_transfer: Literal["auto", "native", "stream"] = Field(
        "auto", description="vllm: how full weights reach the rollout engine. native: vLLM's own weight transfer, GPU to "
        "GPU (ipc for the engine on the trainer's GPU, nccl for one on another GPU; needs CUDA); stream: the "
        "project's bucketed push through host memory (any platform); auto: native where the installed vLLM has it "
        "and the trainer's weights are on a CUDA GPU, else stream. LoRA adapters always go as files.")

    @model_validator(mode="after")
    def _native_transfer_needs_vllm(self) -> "SearcherConfig":
        if self.vllm_weight_transfer == "native" and self.backend != "vllm":
            raise ValueError("searcher.vllm_weight_transfer='native' is vLLM's weight transfer into the rollout engine: "
                             f"it needs searcher.backend='vllm', backend is {self.backend!r}")
        return self


class RolloutConfig(StrictModel):
    """Search budgets. "8-3-3" in the paper is top_k=8, keep_per_turn=3, max_turns=3."""

    init_k: int = Field(3, ge=0, description="Naive-RAG documents shown before the first turn.")
    top_k: int = Field(3, ge=1, description="Documents retrieved per query.")
    keep_per_turn: int = Field(2, ge=0, description="At most this many selected documents kept per turn.")
    max_turns: int = Field(2, ge=0, description="Retrieval calls per episode (generations <= max_turns + 1).")
    keep_unselected: bool = Field(
        True, description="A block the searcher did not annotate keeps its top keep_per_turn documents."
    )
    select_initial: bool = Field(
        False, description="The init_k initial documents reach the generator only if the searcher keeps them: the "
        "first <important_info> written before the first search selects from them (ids 1..init_k, at most "
        "keep_per_turn; none written: none kept, whatever keep_unselected), and the prompt says so. False (s3 "
        "as shipped): they always reach the generator and ids that refer to them are only validated.")

    @model_validator(mode="after")
    def _selection_can_keep(self) -> "RolloutConfig":
        if self.select_initial and self.keep_per_turn < 1:
            raise ValueError("rollout.select_initial needs rollout.keep_per_turn >= 1: with 0 no document could "
                             "ever reach the generator")
        return self


class RewardConfig(StrictModel):
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
    format_penalty: float = Field(
        0.0, ge=0, description="Subtracted from the reward of an episode with any malformed turn (broken JSON, "
        "no action, query and complete at once, ids out of range), so that RL does not drift out of the protocol "
        "that the lenient parser still reads. 0 = off (s3's reward).")
