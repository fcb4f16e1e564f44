"""Checkpoint round trip: weights, optimiser / value-head state, step, RNG and data cursor."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from s3_ray.config import TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from s3_ray.rl.algo.update import PolicyUpdater
from s3_ray.types import QAItem, Trajectory

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


def _trajs(tok):
    ids = list(tok("<query>founder</query>", add_special_tokens=False)["input_ids"])
    return [
        Trajectory(QAItem("q", "q", ("a",)), [1, 2, 3], ids, [1] * len(ids), reward=r) for r in (1.0, 0.0, 0.5)
    ]


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_round_trip_restores_everything(tiny, tmp_path, algorithm):
    base, tok = tiny
    model = copy.deepcopy(base)
    up = PolicyUpdater(model, None, TrainConfig(algorithm=algorithm, lr=1e-3, kl_coef=0.0), pad_id=tok.pad_token_id)
    up.step(_trajs(tok))
    saved_weights = _flat(model)
    saved_opt = copy.deepcopy(up.optimizer.state_dict())
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(9)
    path = save_checkpoint(tmp_path / "step-7", model, up, 7, extra={"stream": {"epoch": 1, "cursor": 3}},
                           tokenizer=tok)
    expected_draws = (torch.rand(3), random.random(), np.random.rand())

    assert (path / "trainer_state.pt").is_file() and (path / "tokenizer_config.json").is_file()
    assert any(path.glob("*.safetensors"))
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 7 and meta["lora"] is False and not (path / "adapter").exists()
    torch.load(path / "trainer_state.pt", weights_only=True)  # nothing needs arbitrary unpickling

    fresh = copy.deepcopy(base)  # different weights: base never stepped
    assert not torch.equal(_flat(fresh), saved_weights)
    up2 = PolicyUpdater(fresh, None, TrainConfig(algorithm=algorithm, lr=1e-3, kl_coef=0.0), pad_id=tok.pad_token_id)
    state = load_checkpoint(path, fresh, up2)
    assert state["step"] == 7 and state["extra"] == {"stream": {"epoch": 1, "cursor": 3}}
    assert torch.equal(_flat(fresh), saved_weights)
    got = up2.optimizer.state_dict()
    assert got["param_groups"] == saved_opt["param_groups"]
    for k, v in saved_opt["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(got["state"][k][name]), torch.as_tensor(t)), (k, name)
    if algorithm == "ppo":
        assert torch.equal(up2.value_head.proj.weight, up.value_head.proj.weight)
    draws = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]
    # the restored optimiser keeps working
    up2.step(_trajs(tok))


def test_plain_optimizer_and_replacing_a_checkpoint(tiny, tmp_path):
    model, tok = tiny
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    save_checkpoint(tmp_path / "ckpt", model, opt, 1, extra={})
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    target = _flat(model)
    save_checkpoint(tmp_path / "ckpt", model, opt.state_dict(), 2, extra={})  # replaces step 1
    with torch.no_grad():
        next(model.parameters()).zero_()
    state = load_checkpoint(tmp_path / "ckpt", model, opt, restore_rng=False)
    assert state["step"] == 2 and torch.equal(_flat(model), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folders left


def test_latest_checkpoint_and_errors(tiny, tmp_path):
    model, _ = tiny
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10, 4):
        save_checkpoint(tmp_path / f"step-{step}", model, {}, step)
    (tmp_path / ".step-99.tmp-x").mkdir()
    (tmp_path / ".step-99.tmp-x" / "meta.json").write_text(json.dumps({"step": 99}))
    assert latest_checkpoint(tmp_path) == tmp_path / "step-10"
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(tmp_path / ".step-99.tmp-x", model)
