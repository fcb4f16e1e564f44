"""Config sections of evaluation (which methods, sets and baselines) and of budget sweeps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from s3_ray.config.base import StrictModel


class EvalDatasetConfig(StrictModel):
    """One evaluation set (see `s3_ray.data.datasets`)."""

    name: str = Field(..., min_length=1, description="Label in the report; the FlashRAG config for format hf.")
    path: str = Field(..., min_length=1, description="File (flashrag/parquet/mirage) or split name (hf).")
    format: Literal["auto", "flashrag", "parquet", "mirage", "hf"] = "auto"
    tasks: list[str] | None = Field(None, description="MIRAGE tasks to keep (None: all).")


class EvalConfig(StrictModel):
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
    task_gpus: float | None = Field(
        None, ge=0, description="GPUs per evaluation task that loads a searcher or baseline LM (and per inference "
        "sweep trial); None: 1 when the submitting process sees CUDA, else 0 (set it on a cluster whose head node "
        "has no GPU).")


class SweepConfig(StrictModel):
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
