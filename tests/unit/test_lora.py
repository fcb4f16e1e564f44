"""LoRA: only adapters train, adapters-off is the base (the KL reference), checkpoints resume
exactly and export a plain HF folder, warm-up adapters merge into the base."""

from __future__ import annotations

import copy

import pytest
import torch

from s3_ray.config import TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.algo.batch import collate, token_logprobs
from s3_ray.rl.model.checkpoint import load_checkpoint, save_checkpoint
from s3_ray.rl.model.lora import (
    AdapterOffReference,
    apply_lora,
    is_lora,
    merge_lora,
    merged_state_dict,
)
from s3_ray.rl.model.policy import enable_gradient_checkpointing
from s3_ray.rl.algo.update import PolicyUpdater
from s3_ray.types import QAItem, Trajectory

torch.set_num_threads(1)
CFG = TrainConfig(lora_rank=4, lora_alpha=8, lr=1e-2, kl_coef=0.1)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


def _trajs(tok):
    good = list(tok('<query>{"query": "founder born town"}</query>', add_special_tokens=False)["input_ids"])
    bad = list(tok('<query>{"query": "the river"}</query>', add_special_tokens=False)["input_ids"])
    item = QAItem("q", "who founded it?", ("x",))
    return [Trajectory(item, [1, 2, 3], ids, [1] * len(ids), reward=r) for ids, r in ((good, 1.0), (bad, 0.0))] * 2


def _logits(model, tok):
    ids = torch.tensor([tok("<question>who founded the company?</question>")["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _trained_lora(tiny, steps=2, cfg=CFG):
    base, tok = tiny
    policy = apply_lora(copy.deepcopy(base), cfg)
    up = PolicyUpdater(policy, AdapterOffReference(policy), cfg, pad_id=tok.pad_token_id)
    for _ in range(steps):
        up.step(_trajs(tok))
    return policy, up


def test_only_adapter_parameters_train(tiny):
    base, _ = tiny
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    policy, up = _trained_lora(tiny)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n for n in trainable)
    assert {id(p) for p in up.policy_params} == {id(p) for p in policy.parameters() if p.requires_grad}
    for name, tensor in policy.get_base_model().state_dict().items():
        if ".lora_" not in name:
            assert torch.equal(tensor, frozen[name.replace(".base_layer.", ".")]), name
    assert any(p.abs().sum() > 0 for n, p in policy.named_parameters() if ".lora_B." in n)


def test_adapters_off_reference_equals_the_base(tiny):
    base, tok = tiny
    policy, _ = _trained_lora(tiny)
    batch = collate(_trajs(tok), tok.pad_token_id)
    ref_lp = token_logprobs(AdapterOffReference(policy), batch)
    base_lp = token_logprobs(base, batch)
    pol_lp = token_logprobs(policy, batch)
    m = batch.loss_mask.bool()
    assert torch.allclose(ref_lp[m], base_lp[m], atol=1e-6)
    assert not torch.allclose(pol_lp[m], base_lp[m], atol=1e-3)  # the adapter did move the policy
    assert policy.training  # the reference forward restored the policy's mode


def test_checkpoint_resumes_exactly_and_exports_plain_hf(tiny, tmp_path):
    base, tok = tiny
    policy, up = _trained_lora(tiny)
    path = save_checkpoint(tmp_path / "ckpt", policy, up, 2, extra={}, tokenizer=tok)
    assert (path / "adapter" / "adapter_model.safetensors").is_file() and (path / "config.json").is_file()

    served, _ = load_causal_lm(str(path))  # plain HF folder: the merged policy, no peft needed
    assert not is_lora(served)
    assert torch.allclose(_logits(served, tok), _logits(policy, tok), atol=1e-4)

    fresh = apply_lora(copy.deepcopy(base), CFG)
    up2 = PolicyUpdater(fresh, AdapterOffReference(fresh), CFG, pad_id=tok.pad_token_id)
    load_checkpoint(path, fresh, up2, restore_rng=False)
    assert torch.equal(_logits(fresh, tok), _logits(policy, tok))
    for (n1, p1), (n2, p2) in zip(policy.named_parameters(), fresh.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert up2.kl_ctl.value == up.kl_ctl.value and up2.moved_from_ref
    # identical optimiser state: one more step on both gives identical weights
    up.step(_trajs(tok))
    up2.step(_trajs(tok))
    for p1, p2 in zip(policy.parameters(), fresh.parameters()):
        assert torch.equal(p1, p2)

    plain = copy.deepcopy(base)
    with pytest.raises(ValueError, match="trained a LoRA adapter"):
        load_checkpoint(path, plain, torch.optim.AdamW(plain.parameters()))
    load_checkpoint(path, plain, restore_rng=False)  # merged weights, no optimiser: fine
    assert torch.allclose(_logits(plain, tok), _logits(served, tok))


def test_full_checkpoint_into_lora_model_is_refused(tiny, tmp_path):
    base, _ = tiny
    save_checkpoint(tmp_path / "full", base, {}, 1)
    with pytest.raises(FileNotFoundError, match="adapter"):
        load_checkpoint(tmp_path / "full", apply_lora(copy.deepcopy(base), CFG), restore_rng=False)


def test_merged_state_dict_matches_peft_merge_and_warmup_merge(tiny):
    _, tok = tiny
    policy, _ = _trained_lora(tiny)
    merged = merged_state_dict(policy)
    reference = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for k in merged:
        assert torch.allclose(merged[k], reference[k], atol=1e-6), k
    # warm-up path: merge, attach a fresh adapter; adapters-off == warmed-up policy == new policy
    warmed_logits = _logits(policy, tok)
    plain = merge_lora(policy)
    assert not is_lora(plain)
    rl_policy = apply_lora(plain, CFG)
    assert torch.allclose(_logits(rl_policy, tok), warmed_logits, atol=1e-5)
    with torch.no_grad(), rl_policy.disable_adapter():
        off = rl_policy(input_ids=torch.tensor([tok("<question>who founded the company?</question>")["input_ids"]])).logits
    assert torch.allclose(off, warmed_logits, atol=1e-5)


def test_targets_from_config_and_bad_targets(tiny):
    base, _ = tiny
    only_q = apply_lora(copy.deepcopy(base), TrainConfig(lora_rank=2, lora_targets=["q_proj"]))
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in only_q.named_parameters() if p.requires_grad}
    assert names == {"q_proj"}
    with pytest.raises(ValueError, match="lora_targets"):
        apply_lora(copy.deepcopy(base), TrainConfig(lora_rank=2, lora_targets=["no_such_layer"]))
    with pytest.raises(ValueError, match="lora_rank must be >= 1"):
        apply_lora(copy.deepcopy(base), TrainConfig(lora_rank=0))


def test_gradient_checkpointing_gives_the_same_update(tiny):
    base, tok = tiny
    cfg = CFG.model_copy(update={"share_prefix": False})  # compare checkpointing alone (it turns sharing off)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same random A init of the adapter
        model = apply_lora(copy.deepcopy(base), cfg)
        if checkpointing:
            enable_gradient_checkpointing(model)
            bare = model.get_base_model()
            # the flag's name follows transformers: is_gradient_checkpointing before the rename
            # to is_activation_checkpointing (absent from 5.16, the lowest release we support)
            flag = next(name for name in ("is_activation_checkpointing", "is_gradient_checkpointing")
                        if hasattr(type(bare), name))
            assert getattr(bare, flag)
        up = PolicyUpdater(model, None, cfg, pad_id=tok.pad_token_id)
        metrics = up.step(_trajs(tok))
        results.append((metrics["grad_norm"], torch.cat([p.detach().flatten() for p in up.policy_params])))
    assert results[0][0] > 0 and results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
