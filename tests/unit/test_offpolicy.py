"""Off-policy correction: importance weights, identity when nothing is stale, behaviour log-probs
recorded by the rollout engine."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from fakes import FakeRetriever
from s3_ray.agent.policy import HFPolicy
from s3_ray.agent.rollout import run_rollout
from s3_ray.clients import RetrieverClient
from s3_ray.config import TrainConfig, load_config
from s3_ray.models import load_causal_lm
from s3_ray.rl.algo.batch import collate, token_logprobs
from s3_ray.rl.algo.offpolicy import WeightStats, importance_weights
from s3_ray.rl.algo.update import PolicyUpdater
from s3_ray.types import QAItem, Trajectory

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


def _ids(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _group(tok, qid="q1"):
    prompt = _ids(tok, "<question>who founded the company?</question>")
    out = []
    for i, (turn, reward) in enumerate([('<query>{"query": "founder"}</query>', 1.0),
                                        ('<query>{"query": "river"}</query>', 0.0),
                                        ('<query>{"query": "founder born"}</query>', 1.0),
                                        ('<query>{"query": "the year"}</query>', 0.0)]):
        a, env = _ids(tok, turn), _ids(tok, "<information>Doc 1 text</information>")
        end = _ids(tok, "<search_complete>True</search_complete>")
        out.append(Trajectory(QAItem(qid, "q", ("x",)), prompt, a + env + end,
                              [1] * len(a) + [0] * len(env) + [1] * len(end), reward=reward))
    return out


def _with_behaviour(trajs, model, tok, temperature=1.0, shift=0.0):
    """Copies of `trajs` whose behaviour log-probs are `model`'s own (minus `shift` on every token),
    computed with the updater's micro-batches (2 rows, shared prefix), so bit for bit its own."""
    batch = collate(trajs, tok.pad_token_id)
    lp = token_logprobs(model, batch, temperature, chunk_size=2, share_prefix=True)
    out = []
    for i, t in enumerate(trajs):
        p = len(t.prompt_ids)
        row = lp[i, p - 1: p - 1 + len(t.response_ids)].tolist()
        beh = [x - shift if m else 0.0 for x, m in zip(row, t.loss_mask)]
        out.append(dataclasses.replace(t, behaviour_logprobs=beh))
    return out


def _step(model, tok, trajs, **async_cfg):
    """One update on a copy of `model`; returns (metrics, gradients of the first step)."""
    m = copy.deepcopy(model)
    cfg = TrainConfig(lr=1e-3, kl_coef=0.0, micro_batch=2, **({"async": async_cfg} if async_cfg else {}))
    updater = PolicyUpdater(m, None, cfg, pad_id=tok.pad_token_id)
    grads = {}
    hooks = [p.register_hook(lambda g, n=n: grads.__setitem__(n, grads.get(n, 0) + g.clone()))
             for n, p in m.named_parameters() if p.requires_grad]
    metrics = updater.step(trajs)
    for h in hooks:
        h.remove()
    return metrics, grads, m


def test_importance_weights_equal_a_hand_computation():
    torch.manual_seed(1)
    prox = torch.log_softmax(torch.randn(3, 5), -1)
    beh = torch.log_softmax(torch.randn(3, 5), -1)
    mask = torch.tensor([[1, 1, 1, 0, 1], [0, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    cap = 1.5
    for kind in ("tis", "decoupled"):
        used, raw = importance_weights(kind, prox, beh, mask, cap)
        stats = WeightStats()
        stats.add(used, raw, mask, cap)
        kept = []
        for i in range(3):
            for j in range(5):
                r = math.exp(prox[i, j].item() - beh[i, j].item())
                want = (min(r, cap) if kind == "tis" else (r if r <= cap else 0.0)) if mask[i, j] else 0.0
                assert used[i, j].item() == pytest.approx(want, rel=1e-6)
                if mask[i, j]:
                    kept.append((r, want))
        m = stats.metrics()
        assert m["is/weight_mean"] == pytest.approx(sum(w for _, w in kept) / len(kept), rel=1e-6)
        assert m["is/weight_max"] == pytest.approx(max(r for r, _ in kept), rel=1e-6)
        assert m["is/truncated_share"] == pytest.approx(sum(r > cap for r, _ in kept) / len(kept))
    with pytest.raises(ValueError, match="train.async.correction"):
        importance_weights("ppo", prox, beh, mask, cap)


def test_equal_policies_give_weights_of_exactly_one():
    lp = torch.log_softmax(torch.randn(2, 4), -1)
    used, raw = importance_weights("decoupled", lp, lp.clone(), torch.ones(2, 4), 2.0)
    assert torch.equal(used, torch.ones(2, 4)) and torch.equal(raw, torch.ones(2, 4))


def test_synchronous_config_ignores_behaviour_logprobs_exactly(tiny):
    """max_staleness 0: recorded behaviour log-probs (even wrong ones) change nothing, bit for bit."""
    model, tok = tiny
    plain = _group(tok)
    skewed = _with_behaviour(plain, model, tok, shift=0.7)
    m1, g1, w1 = _step(model, tok, plain)
    m2, g2, w2 = _step(model, tok, skewed)
    assert m1["loss"] == m2["loss"] and m1["pg_loss"] == m2["pg_loss"]
    assert g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)
    assert all(torch.equal(a, b) for a, b in zip(w1.parameters(), w2.parameters()))
    assert not any(k.startswith("is/") for k in m2)


@pytest.mark.parametrize("kind", ["tis", "decoupled"])
def test_correction_is_identity_when_behaviour_is_the_current_policy(tiny, kind):
    """S > 0 with trajectories the current policy sampled: the same loss and gradients as the
    synchronous trainer on the same seed (every weight is exp(0) = 1)."""
    model, tok = tiny
    plain = _group(tok)
    fresh = _with_behaviour(plain, model, tok)
    torch.manual_seed(0)
    m1, g1, _ = _step(model, tok, plain)
    torch.manual_seed(0)
    m2, g2, _ = _step(model, tok, fresh, max_staleness=2, correction=kind)
    assert m2["is/weight_mean"] == 1.0 and m2["is/weight_max"] == 1.0 and m2["is/truncated_share"] == 0.0
    assert m1["loss"] == m2["loss"] and m1["pg_loss"] == m2["pg_loss"]
    assert g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)


def test_stale_tokens_are_reweighted(tiny):
    """Behaviour log-probs 0.5 below the current policy's on every trained token: the raw weight is
    e^0.5 = 1.65 everywhere; TIS with C = 1.2 truncates all of them (the loss scales by 1.2),
    decoupled PPO masks all of them out (no policy gradient)."""
    model, tok = tiny
    plain = _group(tok)
    stale = _with_behaviour(plain, model, tok, shift=0.5)
    m0, g0, _ = _step(model, tok, plain)
    mt, gt, _ = _step(model, tok, stale, max_staleness=1, correction="tis", tis_cap=1.2)
    assert mt["is/weight_max"] == pytest.approx(math.exp(0.5), rel=1e-4)
    assert mt["is/truncated_share"] == 1.0 and mt["is/weight_mean"] == pytest.approx(1.2)
    assert mt["pg_loss"] == pytest.approx(1.2 * m0["pg_loss"], rel=1e-5, abs=1e-7)
    for k in g0:
        torch.testing.assert_close(gt[k], 1.2 * g0[k], rtol=1e-4, atol=1e-7)
    md, gd, _ = _step(model, tok, stale, max_staleness=1, correction="decoupled", tis_cap=1.2)
    assert md["pg_loss"] == 0.0 and md["is/weight_mean"] == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in gd.values())


def test_async_update_without_behaviour_logprobs_is_an_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="behaviour_logprobs"):
        _step(model, tok, _group(tok), max_staleness=1)


def test_collate_puts_behaviour_logprobs_on_the_token_grid():
    t = Trajectory(QAItem("q", "?", ("a",)), [5, 6], [7, 8, 9], [1, 0, 1], behaviour_logprobs=[-1.0, 0.0, -3.0])
    b = collate([t], pad_id=0)
    assert b.behaviour_logp.tolist() == [[0.0, -1.0, 0.0, -3.0]]
    assert collate([t], pad_id=0, max_len=4).behaviour_logp.tolist() == [[-1.0, 0.0, -3.0]]
    assert collate([t, Trajectory(t.item, [5], [7], [1])], pad_id=0).behaviour_logp is None
    with pytest.raises(ValueError, match="behaviour log-probs"):
        collate([Trajectory(t.item, [5], [7, 8], [1, 1], behaviour_logprobs=[-1.0])], pad_id=0)


def test_rollout_records_the_logprobs_it_sampled_with_and_the_version_per_turn(tiny):
    """HFPolicy reports each sampled token's log-prob; on an untruncated context they equal the
    trainer's log-probs of the same tokens under the same weights, also when the batch's first
    turn is prefilled once per shared part (a common instruction prefix and duplicate rows)."""
    model, tok = tiny
    torch.manual_seed(0)
    cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=6", "searcher.temperature=0.8",
                             "searcher.max_prompt_tokens=4096", "rollout.max_turns=2"])
    policy = HFPolicy(model, tok, cfg.searcher)
    policy.version = 7
    items = [QAItem("q1", "Who founded Holt Company?", ("x",))] * 2 + [QAItem("q2", "Where is Lake Oru?", ("y",))] * 2
    trajs = run_rollout(items, policy, tok, RetrieverClient.in_process(FakeRetriever()), cfg.rollout, cfg.searcher)
    assert policy.share_prefill
    lp = token_logprobs(model, collate(trajs, tok.pad_token_id), temperature=0.8)
    for i, t in enumerate(trajs):
        assert t.turn_versions == [7] * len(t.turns)
        assert len(t.behaviour_logprobs) == len(t.response_ids)
        p = len(t.prompt_ids)
        mine = lp[i, p - 1: p - 1 + len(t.response_ids)]
        for j, (m, b) in enumerate(zip(t.loss_mask, t.behaviour_logprobs)):
            if m:
                assert b == pytest.approx(mine[j].item(), abs=1e-4)
            else:
                assert b == 0.0
