"""The memory plan (`s3_ray.plans.memory`): the fake-tensor step models the real one, the paper
config's plan is computed against its GPUs, and a run that does not fit stops in one line."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from jobs import runtime
from s3_ray.config import load_config, load_job_config
from tests.unit.test_dry_runs import nothing_heavy  # noqa: F401 -- autouse fixture: no Ray, no model

CONFIGS = Path(runtime.__file__).parent / "configs"
PAPER = CONFIGS / "s3_paper.yaml"

TINY_QWEN2 = {"model_type": "qwen2", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY_LLAMA = {"model_type": "llama", "vocab_size": 700, "hidden_size": 96, "intermediate_size": 160,
              "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2,
              "tie_word_embeddings": True}


def _spec(shape: dict, fake: bool, overrides: list[str]) -> dict:
    cfg = load_config(None, ["train.micro_batch=2", "train.questions_per_step=2", "train.group_size=2",
                             "train.kl_coef=0.01", *overrides])
    return {"config": {"train": cfg.train.model_dump(), "searcher": cfg.searcher.model_dump()}, "shape": shape,
            "rows": 4, "prompt_tokens": 24, "segments": [[16, 1], [24, 0], [16, 1]], "fake": fake, "gpu": False}


@pytest.mark.parametrize("shape, overrides", [
    (TINY_QWEN2, ["train.algorithm=ppo"]),
    (TINY_LLAMA, ["train.algorithm=grpo", "train.ppo_epochs=2"]),
    pytest.param("smollm2-135m-instruct", ["train.algorithm=grpo"], marks=pytest.mark.slow),  # 30 layers: minutes
], ids=["tiny-qwen2-ppo", "tiny-llama-grpo", "smollm2-135m"])
def test_fake_step_matches_the_real_step_on_cpu(shape: dict | str, overrides: list[str]) -> None:
    """The same update step, once with fake tensors and once for real on CPU: the tracker's peaks agree
    within 10% (so the fake run models the real one), and the logits are told apart."""
    from s3_ray.models.shapes import model_shape
    from s3_ray.rl.algo.memory_step import measure_step

    if isinstance(shape, str):
        shape = model_shape(shape)
    fake = measure_step(_spec(shape, True, overrides))
    real = measure_step(_spec(shape, False, overrides))
    assert real["update_skipped"] == fake["update_skipped"] == 0.0
    assert abs(fake["peak"] - real["peak"]) <= 0.10 * real["peak"], (fake, real)
    assert fake["parts"]["logits"] > 0 and fake["parts"]["optimizer"] > 0 and fake["reference"] > 0


def test_trajectory_shape_follows_the_budgets() -> None:
    from s3_ray.plans.memory import trajectory_shape

    cfg = load_config(PAPER)
    prompt, segments = trajectory_shape(cfg)
    assert prompt == 400 + 3 * 160
    assert sum(n for n, m in segments if m) == 5 * 512 and sum(n for n, m in segments if not m) == 3 * 8 * 160
    prompt, segments = trajectory_shape(cfg.with_overrides(["train.max_seq_len=3000"]))
    assert prompt + sum(n for n, _ in segments) <= 3000 and prompt >= 1


def test_vllm_engine_formula() -> None:
    """vLLM reserves gpu_memory_utilization x the GPU; 14B bf16 weights do not fit one 24 GB A10G,
    and split over 4 GPUs they leave room for the KV cache."""
    from s3_ray.plans.memory import vllm_entry

    where = {"gpu": "A10G 24GB", "gpu_memory_gib": 22.5}
    problems: list[str] = []
    one = vllm_entry("generator replica", 1, where, "Qwen/Qwen2.5-14B-Instruct", 0.9, 1, 8256, problems)
    assert one["parts"]["weights"] == pytest.approx(27.51, abs=0.05) and one["parts"]["kv_cache"] == 0
    assert len(problems) == 1 and "KV cache" in problems[0]
    problems.clear()
    four = vllm_entry("generator replica", 1, where, "Qwen/Qwen2.5-14B-Instruct", 0.9, 4, 8256, problems)
    assert problems == [] and four["kv_cache_tokens"] > 8256
    assert four["peak_gib"] == pytest.approx(0.9 * 22.5, abs=0.05)


def _paper_train_plan(overrides: list[str]) -> tuple[list[dict], list[str]]:
    from s3_ray.plans.train import train_plan

    plan = train_plan(load_job_config(PAPER, overrides))
    return plan.sections["memory"], plan.problems


def test_paper_config_fits_the_gpus_cluster_yaml_names() -> None:
    memory, problems = _paper_train_plan([])
    by_actor = {e["actor"]: e for e in memory}
    assert {"train worker", "KL reference", "rollout engine", "retriever replica", "encoder"} <= set(by_actor)
    assert by_actor["train worker"]["gpu"] == "A100 80GB"
    assert [p for p in problems if p.startswith("memory:")] == []
    # what made it fit: scoring in chunks (logits ~1 GiB, not ~330), the index in fp16 split over the
    # replica's 2 GPUs, and a micro-batch the plan allows
    assert by_actor["train worker"]["parts"]["logits"] < 4
    assert by_actor["retriever replica"]["parts"]["index"] < 16


def test_paper_plan_reports_what_does_not_fit_a_40gb_a100() -> None:
    memory, problems = _paper_train_plan(["resources.gpu_memory_gb=40"])
    worker = next(e for e in memory if e["actor"] == "train worker")
    assert worker["gpu_memory_gib"] == 40 and worker["count"] == 4
    assert set(worker["parts"]) == {"weights", "gradients", "optimizer_state", "activations", "logits", "kv_cache",
                                    "index", "cuda_context"}
    # FSDP over 4: a quarter of the fp32 weights and of AdamW's two moments per GPU
    assert worker["parts"]["optimizer_state"] == pytest.approx(2 * 7.6e9 * 4 / 4 / 2**30, rel=0.05)
    assert worker["fits"] is False
    assert any(p.startswith("memory: train worker does not fit") and "40.0 GiB" in p for p in problems)
    # the serving GPUs are 40 GB too in this test: the fp16 index half fits one of them
    assert not any(p.startswith("memory: retriever replica does not fit") for p in problems)


def test_a_run_that_does_not_fit_stops_in_one_line_before_ray(capsys: pytest.CaptureFixture[str]) -> None:
    """The real run checks the same plan first: an index that outgrows its GPU share is one `error:`
    line (the fixture fails the test if Ray or a model starts)."""
    args = ["--config", str(CONFIGS / "demo.yaml"), "--no-generator", "retrieval.backend=dense",
            "serve.retriever_gpus=0.5", "resources.gpu_memory_gb=8", "resources.corpus_passages=21000000",
            "retrieval.encoder=intfloat/e5-base-v2"]
    assert importlib.import_module("jobs.serve").main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: serve cannot start")
    assert "memory: retriever replica does not fit its GPU" in err and "4.0 GiB" in err


def test_dry_run_prints_the_plan_per_actor(capsys: pytest.CaptureFixture[str]) -> None:
    rc = importlib.import_module("jobs.serve").main(
        ["--config", str(PAPER), "--dry-run", "serve.generator_gpus=1", "generator.tensor_parallel_size=1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 2
    actors = {e["actor"]: e for e in out["plan"]["memory"]}
    assert set(actors) == {"retriever replica", "encoder", "generator replica"}
    for e in actors.values():
        assert {"actor", "gpu", "gpu_memory_gib", "peak_gib", "parts"} <= set(e)
    # fp16 vectors, the replica's shard split over its 2 GPUs
    assert actors["retriever replica"]["parts"]["index"] == pytest.approx(21_015_324 * 768 * 2 / 2 / 2**30, abs=0.01)
    # a 14B generator on one A10G is what does not fit (rc 2)
    assert actors["generator replica"]["fits"] is False and actors["retriever replica"]["fits"] is True
    assert actors["generator replica"]["gpu"] == "A10G 24GB"
