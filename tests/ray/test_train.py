"""Ray Train integration: TorchTrainer workers roll out, score and update the searcher."""

import json
import sys
from pathlib import Path

import pytest
import torch

from s3_ray.config import load_config
from s3_ray.types import RewardResult, Trajectory

pytestmark = [pytest.mark.ray]


@pytest.fixture(autouse=True)
def _ship_this_module_by_value():
    # ToyScorer lives in this test module, which Ray workers cannot import by name.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


class NaNScorer:
    """A diverged reward: the loss turns NaN and the collapse guard must stop the run at once."""

    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        return [RewardResult(float("nan")) for _ in trajs]


class ToyScorer:
    """A reward that varies inside each group, so GRPO has a signal (no generator needed)."""

    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        out = []
        for t in trajs:
            reward = float(sum(t.response_ids) % 7) / 7.0
            out.append(RewardResult(reward, {"genacc": reward}))
        return out


def _cfg(tmp_path: Path, **extra):
    overrides = {
        "run_dir": str(tmp_path / "run"),
        "retrieval.index_dir": str(tmp_path / "index"),
        "searcher.model": "tiny-random",
        "searcher.max_new_tokens": 8,
        "searcher.max_prompt_tokens": 512,
        "searcher.num_threads": 1,
        "rollout.max_turns": 1,
        "train.steps": 2,
        "train.questions_per_step": 2,
        "train.group_size": 2,
        "train.lr": 1e-3,
        "train.checkpoint_every": 1,
        "data.train_limit": 8,
        "wandb.enabled": False,
        "train.guard_malformed_rate": None,  # a random tiny model writes malformed turns
        **extra,
    }
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def _retriever(cfg):
    from s3_ray.clients import RetrieverClient
    from s3_ray.data.embedded import resolve_paths
    from s3_ray.retrieval.index import build_index, load_retriever

    build_index(resolve_paths(cfg.data).corpus, cfg.retrieval, progress=False)
    return RetrieverClient.in_process(load_retriever(cfg.retrieval))


def test_two_step_torchtrainer_changes_weights_and_checkpoints(ray_session, tmp_path):
    from s3_ray.rl.ray_train.launch import run_training, summarize
    from s3_ray.data.embedded import load_split
    from s3_ray.models import load_causal_lm

    cfg = _cfg(tmp_path)
    result = run_training(cfg, load_split(cfg.data, "train"), _retriever(cfg), ToyScorer(), name="t2")
    assert result.error is None
    assert result.checkpoint is not None
    trained, _ = load_causal_lm(result.checkpoint.path)
    initial, _ = load_causal_lm("tiny-random")
    diffs = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), initial.parameters())]
    assert max(diffs) > 0, "two GRPO steps left every weight unchanged"

    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "genacc", "pg_loss", "kl", "kl_coef", "searches_mean", "context_docs_mean",
                "context_tokens_mean", "searcher_tokens_mean", "response_tokens_mean", "malformed_rate",
                "time/rollout_s", "time/reward_s", "time/update_s", "time/step_s"):
        assert key in rows[-1], key
    meta = json.loads((Path(result.checkpoint.path) / "meta.json").read_text())
    assert meta["step"] == 2
    summary = summarize(cfg, result)
    assert summary["stop_reason"] == "completed all steps"
    best = max(rows, key=lambda r: r["reward"])
    assert summary["best_reward"] == pytest.approx(best["reward"])
    assert json.loads((Path(summary["best_checkpoint"]) / "meta.json").read_text())["step"] == best["step"]
    assert Path(summary["curves"]).is_file()


def test_worker_crash_resumes_from_last_checkpoint(ray_session, tmp_path):
    """With a LoRA format warm-up, RLOO and adaptive KL: the resumed run finds its merged base."""
    from s3_ray.rl.ray_train.launch import run_training
    from s3_ray.data.embedded import load_split
    from s3_ray.models import load_causal_lm

    cfg = _cfg(tmp_path, **{"train.steps": 3, "train.lora_rank": 4, "train.warmup_steps": 1,
                            "train.warmup_batch": 2, "train.algorithm": "rloo", "train.kl_target": 0.01,
                            "train.gradient_checkpointing": True, "train.micro_batch": 1,
                            "train.keep_checkpoints": 2})
    result = run_training(cfg, load_split(cfg.data, "train"), _retriever(cfg), ToyScorer(), name="crash",
                          fail_at_step=1, max_failures=1)
    assert result.error is None
    steps = [json.loads(line)["step"] for line in
             (Path(cfg.run_dir) / "train" / "metrics.jsonl").read_text().splitlines()]
    # warm-up (step 0), step 1 ran, the worker died after its checkpoint, the restart went on from step 2
    assert steps == [0, 1, 2, 3]
    assert (Path(cfg.run_dir) / "train" / ".injected_failure").exists()
    ckpt = Path(result.checkpoint.path)
    assert json.loads((ckpt / "meta.json").read_text())["lora"] is True
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    load_causal_lm(str(ckpt))  # the export is a plain HF folder
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "train" / "metrics.jsonl").read_text().splitlines()]
    coefs = [r["kl_coef"] for r in rows if "kl_coef" in r]
    assert len(coefs) == 3 and coefs[0] == pytest.approx(0.01) and len(set(coefs)) == 3  # adapted, carried over
    # 4 checkpoints were written (steps 0-3); keep_checkpoints=2 keeps the 2 best by reward plus the
    # latest when it is not among them
    kept = sorted(p for p in (Path(cfg.run_dir) / "ray" / "crash").glob("checkpoint_*") if p.is_dir())
    assert 2 <= len(kept) <= 3 and ckpt in kept


def test_a_rerun_job_resumes_past_its_warm_up_checkpoint(ray_session, tmp_path):
    """The warm-up checkpoint has no reward (NaN). A second job on the same run folder restores Ray's
    checkpoint snapshot from JSON and must still rank the checkpoints it reports next."""
    from s3_ray.rl.ray_train.launch import run_training
    from s3_ray.data.embedded import load_split

    extra = {"train.warmup_steps": 1, "train.warmup_batch": 2, "train.keep_checkpoints": 2}
    cfg = _cfg(tmp_path, **{**extra, "train.steps": 1})
    items, retriever = load_split(cfg.data, "train"), _retriever(cfg)
    assert run_training(cfg, items, retriever, ToyScorer(), name="rerun").error is None
    cfg = _cfg(tmp_path, **{**extra, "train.steps": 2})
    result = run_training(cfg, items, retriever, ToyScorer(), name="rerun")  # a new job, same folder
    assert result.error is None
    assert json.loads((Path(result.checkpoint.path) / "meta.json").read_text())["step"] == 2
    steps = [json.loads(line)["step"] for line in
             (Path(cfg.run_dir) / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]


def test_collapse_guard_stops_cleanly_with_a_checkpoint(ray_session, tmp_path):
    from s3_ray.rl.ray_train.launch import run_training, summarize
    from s3_ray.data.embedded import load_split
    from s3_ray.models import load_causal_lm

    cfg = _cfg(tmp_path, **{"train.steps": 3, "train.checkpoint_every": 5})
    result = run_training(cfg, load_split(cfg.data, "train"), _retriever(cfg), NaNScorer(), name="guard")
    assert result.error is None
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "non-finite loss" in rows[0]["stop_reason"]
    assert json.loads((Path(result.checkpoint.path) / "meta.json").read_text())["step"] == 1
    trained, _ = load_causal_lm(result.checkpoint.path)
    assert all(torch.isfinite(p).all() for p in trained.parameters())  # the NaN step was not applied
    summary = summarize(cfg, result)
    assert "non-finite loss" in summary["stop_reason"] and summary["best_checkpoint"] is None


def test_fsdp_two_workers_warm_up_crash_and_resume(ray_session, tmp_path):
    """train.parallel=fsdp over 2 gloo workers (with gradient checkpointing, as the paper config):
    the warm-up, the rollout copy, sharded checkpoints written by both workers straight into Ray
    Train's storage folder, and a worker crash resumed from them."""
    from s3_ray.rl.ray_train.launch import run_training
    from s3_ray.data.embedded import load_split
    from s3_ray.models import load_causal_lm

    cfg = _cfg(tmp_path, **{"train.parallel": "fsdp", "train.num_workers": 2, "train.cpus_per_worker": 0.5,
                            "train.steps": 2, "train.warmup_steps": 1, "train.warmup_batch": 2,
                            "train.kl_coef": 0.01, "train.gradient_checkpointing": True})
    result = run_training(cfg, load_split(cfg.data, "train"), _retriever(cfg), ToyScorer(), name="fsdp",
                          fail_at_step=1, max_failures=1)
    assert result.error is None
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # warm-up, step 1, crash, resumed step 2
    assert (Path(cfg.run_dir) / "train" / ".injected_failure").exists()
    # the sharded reference took the warmed-up weights: no KL before the first RL update
    assert rows[1]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[1]["update_skipped"] == 0.0
    # the rollout copy follows the sharded policy after every update
    assert all(r["time/weight_sync_s"] >= 0 for r in rows[1:])
    ckpt = Path(result.checkpoint.path)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 2 and meta["format"] == 2 and meta["world_size"] == 2
    # each worker wrote its own shard file into the checkpoint folder, which lies in the run's storage
    assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert ckpt.parent == Path(cfg.run_dir).resolve() / "ray" / "fsdp"
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    trained, _ = load_causal_lm(str(ckpt))
    warmed, _ = load_causal_lm(str(Path(cfg.run_dir) / "ray" / "fsdp" / "warmup_reference"))
    initial, _ = load_causal_lm("tiny-random")
    moved = lambda a, b: max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert moved(warmed, initial) > 0, "the sharded warm-up changed no weight"
    assert moved(trained, warmed) > 0, "two sharded RL steps changed no weight"
