"""Answer metrics, the naive-RAG baseline cache, and the Gain-Beyond-RAG reward."""

from s3_ray.reward.baseline_file import (
    BaselineCache,
    BaselineError,
    BaselineMissing,
    BaselineRecord,
    BaselineSettings,
)
from s3_ray.reward.fingerprint import baseline_path, baseline_settings, open_baseline, retriever_fingerprint
from s3_ray.reward.gain import RewardScorer, gain_beyond_baseline
from s3_ray.reward.judge import batch_genacc
from s3_ray.reward.metrics import exact_match, f1, genacc, normalize_answer, span_match
from s3_ray.reward.precompute import precompute_baseline, precompute_split
from s3_ray.reward.summary import summarize_split
from s3_ray.reward.training_filter import filter_unanswered, is_yes_no

__all__ = [
    "BaselineCache",
    "BaselineError",
    "BaselineMissing",
    "BaselineRecord",
    "BaselineSettings",
    "RewardScorer",
    "baseline_path",
    "baseline_settings",
    "batch_genacc",
    "exact_match",
    "f1",
    "filter_unanswered",
    "gain_beyond_baseline",
    "genacc",
    "is_yes_no",
    "open_baseline",
    "normalize_answer",
    "precompute_baseline",
    "precompute_split",
    "summarize_split",
    "retriever_fingerprint",
    "span_match",
]
