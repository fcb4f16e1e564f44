"""FSDP (train.parallel=fsdp) on 2 CPU ranks over gloo: the sharded update equals the unsharded
one, rollouts see the updated weights, and a sharded checkpoint resumes exactly, sharded again or
in one plain process."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from isolated import run_isolated
from s3_ray.config import TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.model.checkpoint import load_checkpoint, save_checkpoint
from s3_ray.rl.algo.update import PolicyUpdater

WORLD = 2
TOL = 1e-5


def _group(tok, good_reward: float):
    from test_update import _group as group

    trajs = group(tok)
    for t in trajs:
        t.reward = good_reward if t.reward > 0 else 1.0 - good_reward
    return trajs


def _max_diff(a: dict, b: dict) -> float:
    # an unsharded HF model may list a tied head under one name only; every weight must be compared
    common = set(a) & set(b)
    assert len(common) >= min(len(a), len(b)) and common, sorted(set(a) ^ set(b))[:5]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in common)


def _plain(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank_main(rank: int, world: int, port: int, tmp: str) -> None:
    """One rank: for GRPO and PPO, two sharded steps with a checkpoint between them, checked
    (on rank 0) against the same steps without sharding."""
    from datetime import timedelta

    import torch.distributed as dist

    from s3_ray.rl.model.weight_sync import iter_policy_weights
    from s3_ray.config import load_config
    from s3_ray.rl.model.policy import frozen_copy, shard_for_training
    from s3_ray.rl.model.sharding import full_state_dict, is_sharded, is_sharded_tensor
    from s3_ray.rl.loop.trainer import SearcherTrainer
    from s3_ray.types import QAItem

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        initial, tok = load_causal_lm("tiny-random", for_training=True)
        step1, step2 = _group(tok, 1.0), _group(tok, 0.0)  # the same batches on every rank
        for algo in ("grpo", "ppo"):
            # share_prefix off: sharded forwards never share (FSDP's root runs each one), so the
            # unsharded run must read every row in full too for the two to match to float precision
            cfg = TrainConfig(lr=3e-3, kl_coef=0.01, clip_ratio=0.2, max_grad_norm=1.0, algorithm=algo,
                              share_prefix=False)

            def fresh(sharded: bool):
                model = copy.deepcopy(initial)
                ref = copy.deepcopy(initial).eval().requires_grad_(False)
                if sharded:
                    shard_for_training(model, ref)
                return model, PolicyUpdater(model, ref, cfg, pad_id=tok.pad_token_id)

            model, up = fresh(sharded=True)
            assert is_sharded(model)
            m1 = up.step(step1)
            # collectives: every rank gathers, only the writer keeps (as the Train worker does)
            after1, opt = full_state_dict(model, keep=rank == 0), up.state_dict(keep=rank == 0)
            assert bool(after1) == (rank == 0)
            ckpt = Path(tmp) / algo
            if rank == 0:
                save_checkpoint(ckpt, model, opt, step=1, tokenizer=tok, weights=after1)
            dist.barrier()
            # what rollouts sample from: the trainer's unsharded copy, and a vLLM engine's weights
            copy_model = frozen_copy(initial)
            trainer = SearcherTrainer(load_config(None, []), model, None, tok, None, None,
                                      [QAItem("q", "q", ("a",))], rank=rank, world=world, rollout_model=copy_model)
            trainer.weights_changed()
            trainer.sync_rollout_weights()  # collective
            engine_weights = dict(iter_policy_weights(model))  # collective: one gather at a time
            if rank == 0:
                assert _max_diff(_plain(copy_model), after1) == 0.0
                assert not any(is_sharded_tensor(v) for v in engine_weights.values())
                assert _max_diff(engine_weights, after1) == 0.0

            resumed, up_resumed = fresh(sharded=True)
            load_checkpoint(ckpt, resumed, up_resumed)
            m2 = up.step(step2)
            m2_resumed = up_resumed.step(step2)
            after2, after2_resumed = full_state_dict(model), full_state_dict(resumed)

            if rank == 0:
                plain, up_plain = fresh(sharded=False)
                p1 = up_plain.step(step1)
                d1 = _max_diff(after1, _plain(plain))
                up_plain.step(step2)
                d2 = _max_diff(after2, _plain(plain))
                d_resumed = _max_diff(after2_resumed, after2)
                # the same checkpoint resumed by one plain process (another number of workers)
                solo, up_solo = fresh(sharded=False)
                load_checkpoint(ckpt, solo, up_solo)
                up_solo.step(step2)
                d_solo = _max_diff(_plain(solo), after2)
                moved = _max_diff(after2, _plain(initial))
                arch = json.loads((ckpt / "config.json").read_text())["architectures"]
                meta = json.loads((ckpt / "meta.json").read_text())
                print(f"{algo}: d1={d1:.2e} d2={d2:.2e} resumed={d_resumed:.2e} solo={d_solo:.2e} "
                      f"moved={moved:.2e} grad_norm={m1['grad_norm']:.4f}/{p1['grad_norm']:.4f} arch={arch}")
                assert moved > 1e-3, "two steps left the weights unchanged: the comparison proves nothing"
                assert max(d1, d2, d_resumed, d_solo) < TOL, (d1, d2, d_resumed, d_solo)
                assert m1["grad_norm"] == pytest.approx(p1["grad_norm"], rel=1e-5)
                assert m2["update_skipped"] == 0.0 and m2_resumed["loss"] == pytest.approx(m2["loss"], abs=1e-6)
                assert arch == ["LlamaForCausalLM"] and meta["model_class"] == "LlamaForCausalLM"
                load_causal_lm(str(ckpt))  # the export is a plain HF folder
            dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print("FSDP-OK")


def _spawn(tmp: str) -> None:
    """Runs in a fresh interpreter: WORLD ranks over a loopback TCP store."""
    import socket

    import torch.multiprocessing as mp

    load_causal_lm("tiny-random")  # build the cached model once, before the ranks race for it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(WORLD, port, tmp), nprocs=WORLD)


def test_sharded_update_and_checkpoint_match_the_unsharded_run(tmp_path):
    out = run_isolated(__file__, f"_spawn({str(tmp_path)!r})", "FSDP-OK", timeout=300)
    assert out.count("d1=") == 2  # GRPO and PPO both ran


def test_config_refuses_fsdp_with_lora_uneven_batches_and_models_without_layer_classes():
    from torch import nn

    from s3_ray.config import ConfigError, load_config
    from s3_ray.rl.model.sharding import layer_classes

    with pytest.raises(ConfigError, match="train.parallel=fsdp does not combine with train.lora_rank"):
        load_config(None, ["train.parallel=fsdp", "train.lora_rank=4"])
    with pytest.raises(ConfigError, match="train.questions_per_step=3 is the batch over all workers"):
        load_config(None, ["train.num_workers=2", "train.questions_per_step=3", "train.warmup_batch=2"])
    with pytest.raises(ConfigError, match="train.warmup_batch=3 .* multiple of train.num_workers=2"):
        load_config(None, ["train.num_workers=2", "train.questions_per_step=4", "train.warmup_batch=3"])
    assert load_config(None, ["train.num_workers=2", "train.warmup_batch=2"]).train.questions_per_step == 4
    with pytest.raises(ValueError, match="_no_split_modules"):
        layer_classes(nn.Linear(2, 2))
