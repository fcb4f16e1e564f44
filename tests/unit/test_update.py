"""PolicyUpdater on the tiny random model: learning, masking, micro-batching, DDP, PPO; warm-up."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from isolated import run_isolated
from s3_ray.config import RolloutConfig, TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.algo.batch import collate, token_logprobs
from s3_ray.rl.algo.update import PolicyUpdater
from s3_ray.rl.loop.warmup import (document_names, first_clause, follow_turn, format_demonstrations, initial_evidence,
                                   sft_step)
from s3_ray.types import Passage, QAItem, Trajectory

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_causal_lm("tiny-random", for_training=True)
    return model, tok


@pytest.fixture
def model_tok(tiny):
    model, tok = tiny
    return copy.deepcopy(model), tok


def _ids(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _traj(tok, qid, prompt, searcher_a, env, searcher_b, reward):
    """prompt | searcher turn | environment text (mask 0) | searcher turn."""
    a, e, b = _ids(tok, searcher_a), _ids(tok, env), _ids(tok, searcher_b)
    return Trajectory(
        item=QAItem(qid, prompt, ("x",)),
        prompt_ids=_ids(tok, prompt),
        response_ids=a + e + b,
        loss_mask=[1] * len(a) + [0] * len(e) + [1] * len(b),
        reward=reward,
    )


GOOD = '<query>{"query": "founder born town"}</query>'   # contains the rewarded "founder" token
BAD = '<query>{"query": "the river year"}</query>'
END = "<search_complete>True</search_complete>"
ENV = '<information>Doc 1(Title: "Name") text</information>'


def _group(tok, qid="q1", prompt="<question>who founded the company?</question>"):
    return [
        _traj(tok, qid, prompt, GOOD, ENV, END, 1.0),
        _traj(tok, qid, prompt, GOOD, ENV, END, 1.0),
        _traj(tok, qid, prompt, BAD, ENV, END, 0.0),
        _traj(tok, qid, prompt, BAD, ENV, END, 0.0),
    ]


def _seq_logp(model, tok, trajs):
    batch = collate(trajs, tok.pad_token_id)
    lp = token_logprobs(model, batch)
    return (lp * batch.loss_mask).sum(dim=1)


def _cfg(**kw):
    base = dict(lr=3e-3, kl_coef=0.0, clip_ratio=0.2, max_grad_norm=1.0)
    base.update(kw)
    return TrainConfig(**base)


def test_grpo_steps_raise_logprob_of_rewarded_response(model_tok):
    model, tok = model_tok
    trajs = _group(tok)
    before = _seq_logp(model, tok, trajs)
    up = PolicyUpdater(model, None, _cfg(), pad_id=tok.pad_token_id, temperature=1.0)
    for _ in range(4):
        metrics = up.step(trajs)
    after = _seq_logp(model, tok, trajs)
    gain = after - before
    assert gain[0] > 0.5 and gain[1] > 0.5, gain
    # shared tokens (tags, the final turn) rise for both; the rewarded query must rise much more
    assert gain[0] > gain[2] + 1.0, gain
    for key in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "grad_norm", "adv_mean", "adv_std", "response_tokens"):
        assert key in metrics
    assert metrics["response_tokens"] == float(sum(sum(t.loss_mask) for t in trajs))
    assert metrics["grad_norm"] > 0


def test_equal_rewards_and_no_kl_leave_weights_unchanged(model_tok):
    model, tok = model_tok
    trajs = [*_group(tok, "q1"), *_group(tok, "q2")]
    for t in trajs:
        t.reward = 0.5 if t.item.id == "q1" else -1.0  # constant within each group: no signal
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    PolicyUpdater(model, None, _cfg(), pad_id=tok.pad_token_id).step(trajs)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k


def test_one_step_changes_weights(model_tok):
    model, tok = model_tok
    before = [p.detach().clone() for p in model.parameters()]
    PolicyUpdater(model, None, _cfg(), pad_id=tok.pad_token_id).step(_group(tok))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_micro_batching_matches_one_big_batch(tiny):
    model, tok = tiny
    trajs = _group(tok)
    trajs[1] = _traj(tok, "q1", "<question>a longer question about the founder?</question>", GOOD, "", END, 1.0)
    results = []
    for mb in (1, 4):
        m = copy.deepcopy(model)
        results.append(PolicyUpdater(m, None, _cfg(micro_batch=mb), pad_id=tok.pad_token_id).step(trajs))
    for key in ("loss", "pg_loss", "entropy", "grad_norm"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-4, abs=1e-6), key


class _Exploding(torch.nn.Module):
    def forward(self, *args, **kwargs):  # pragma: no cover - must never be called
        raise AssertionError("reference forward ran although the KL term is off")


def test_kl_term_uses_reference_only_when_enabled(model_tok):
    model, tok = model_tok
    trajs = _group(tok)
    PolicyUpdater(model, _Exploding(), _cfg(kl_coef=0.0), pad_id=tok.pad_token_id).step(trajs)
    ref = copy.deepcopy(model).requires_grad_(False)
    up = PolicyUpdater(model, ref, _cfg(kl_coef=0.1), pad_id=tok.pad_token_id)
    first = up.step(trajs)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the step
    second = up.step(trajs)
    assert second["kl"] > 1e-6


def test_env_tokens_get_no_gradient_signal(tiny):
    """Tokens under mask 0 (here a trailing observation) have no say in the update."""
    model, tok = tiny
    tail = _ids(tok, ENV)
    trajs = _group(tok)
    for t in trajs:
        t.response_ids += tail
        t.loss_mask += [0] * len(tail)
    changed = copy.deepcopy(trajs)
    for t in changed:
        t.response_ids[-len(tail):] = [(i * 7 + 3) % len(tok) for i in t.response_ids[-len(tail):]]
    results, weights = [], []
    for batch in (trajs, changed):
        m = copy.deepcopy(model)
        results.append(PolicyUpdater(m, None, _cfg(), pad_id=tok.pad_token_id).step(batch))
        weights.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    for key in ("pg_loss", "entropy", "grad_norm"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-6), key
    assert torch.allclose(weights[0], weights[1], atol=1e-7)


def test_ppo_learns_and_trains_value_head(model_tok):
    model, tok = model_tok
    trajs = _group(tok)
    up = PolicyUpdater(model, None, _cfg(algorithm="ppo", value_lr=0.05), pad_id=tok.pad_token_id)
    assert up.value_head is not None
    before = _seq_logp(model, tok, trajs)
    for _ in range(4):
        metrics = up.step(trajs)
    gain = _seq_logp(model, tok, trajs) - before
    assert gain[0] > 0 and gain[0] > gain[2] + 0.5, gain
    assert metrics["value_loss"] > 0
    assert up.value_head.proj.bias.abs().item() > 0  # the head moved off its zero init
    assert len(up.optimizer.param_groups) == 2 and up.optimizer.param_groups[1]["lr"] == 0.05


def _ddp_child() -> None:
    """Runs in a fresh interpreter: one-rank gloo group over a loopback TCP store."""
    import socket
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    try:
        model, tok = load_causal_lm("tiny-random", for_training=True)
        ddp = DistributedDataParallel(model)
        for algo in ("grpo", "ppo"):
            up = PolicyUpdater(ddp, None, _cfg(algorithm=algo, micro_batch=2), pad_id=tok.pad_token_id)
            metrics = up.step(_group(tok))
            assert metrics["grad_norm"] > 0, (algo, metrics)
    finally:
        dist.destroy_process_group()
    print("DDP-OK")


def test_works_through_ddp_wrapper():
    run_isolated(__file__, "_ddp_child()", "DDP-OK", timeout=240)


def test_bad_input_is_named():
    tok_free = Trajectory(QAItem("bad-1", "q", ("a",)), [1, 2], [3, 4], [1])
    with pytest.raises(ValueError, match="bad-1.*loss_mask has 1 entries"):
        collate([tok_free], pad_id=0)
    long = Trajectory(QAItem("long", "q", ("a",)), [1, 2], [3, 4, 5], [1, 1, 1])
    with pytest.raises(ValueError, match="long.*does not fit max_len=3"):
        collate([long], pad_id=0, max_len=3)


# ---------------------------------------------------------------- format warm-up

def test_format_demonstrations_teach_format_not_answers():
    items = [QAItem(f"q{i}", f"Who founded the company, based in town {i}?", (f"Founder{i}",)) for i in range(40)]
    docs = [[Passage(str(j), f'"T{j}"\ntext') for j in range(3)] for _ in items]
    targets = format_demonstrations(items, docs, RolloutConfig(keep_per_turn=2), random.Random(0))
    assert len(targets) == len(items)
    searches = [t for t in targets if t.startswith("<query>")]
    stops = [t for t in targets if t.endswith("<search_complete>True</search_complete>")]
    assert searches and stops and len(searches) + len(stops) == len(targets)
    for t, item in zip(targets, items):
        assert item.golden_answers[0] not in t
    assert any('{"query": "Who founded the company"}' in t for t in searches)
    for t in stops:
        ids = [int(x) for x in t.split("[")[1].split("]")[0].split(",")]
        assert 1 <= len(ids) <= 2 and all(1 <= i <= 3 for i in ids)
    assert first_clause("Hi, there") == "Hi, there"


def test_follow_demonstrations_query_names_from_documents_never_answers():
    items = [QAItem(f"q{i}", f"In which year was the mayor of Town{i} born?", ("1798",)) for i in range(60)]
    docs = [[Passage("a", f'"Town{i}"\nTown{i} lies in Qlai Vale. The mayor is Anselm Dreil, born 1798.'),
             Passage("b", '"Other"\nNothing capitalised here.')] for i in range(60)]
    targets = format_demonstrations(items, docs, RolloutConfig(keep_per_turn=2), random.Random(1),
                                    stop_fraction=0.0, follow_fraction=0.5)
    follows = [t for t in targets if t.startswith("<important_info>")]
    plain = [t for t in targets if t.startswith("<query>")]
    assert follows and plain and len(follows) + len(plain) == len(targets)
    for t in follows:  # keeps documents of the init block, then searches a name the question lacks
        ids = [int(x) for x in t.split("[")[1].split("]")[0].split(",")]
        assert 1 <= len(ids) <= 2 and all(1 <= i <= 2 for i in ids)
        assert t.endswith('{"query": "Anselm Dreil"}</query>') or t.endswith('{"query": "Qlai Vale"}</query>')
    assert all("1798" not in t for t in targets)
    assert "Town" not in " ".join(document_names(docs[0], items[0].question))
    with pytest.raises(ValueError, match="follow_fraction"):
        format_demonstrations(items, docs, RolloutConfig(), random.Random(0), follow_fraction=1.5)


def test_follow_turn_parses_as_a_search_that_keeps_documents():
    from s3_ray.agent.protocol import parse_turn

    turn = parse_turn(follow_turn([2, 1], 'Anselm "Dreil"'), block_size=3)
    assert turn.query == 'Anselm "Dreil"' and list(turn.selected) == [2, 1] and not turn.complete and turn.malformed is None


def test_select_initial_demonstrations_keep_the_initial_evidence_in_every_first_turn():
    from s3_ray.agent.protocol import parse_turn

    docs = [Passage("w7", '"Other"\nNothing here.'), Passage("w1", '"Mabun Mills"\nIts headquarters are in Bimham.'),
            Passage("w9", '"Letters"\nSent to Hugo Bumtel in 1870.')]
    items = [QAItem(f"q{i}", f"Who is the mayor of the town where Mabun Mills {i} is headquartered?",
                    ("Hugo Bumtel", "Bumtel"), {"type": "bridge", "support": ["w1", "w2"]}) for i in range(40)]
    assert initial_evidence(items[0], docs, 2) == [2, 3]  # the supporting passage, then the one naming the answer
    budget = RolloutConfig(keep_per_turn=1, select_initial=True)
    targets = format_demonstrations(items, [docs] * 40, budget, random.Random(0), follow_fraction=0.5)
    turns = [parse_turn(t, len(docs)) for t in targets]
    # every kind of first turn, search turns included, keeps the evidence (at most keep_per_turn of it)
    assert all(t.startswith("<important_info>[2]</important_info>\n") for t in targets)
    assert all(turn.selected == (2,) and turn.malformed is None for turn in turns)
    assert any(turn.complete for turn in turns) and any(turn.query for turn in turns)
    # no evidence among the initial documents: keep none of them, and search rather than stop with nothing
    bare = [Passage("x1", '"Other"\nNothing here.'), Passage("x2", '"Elsewhere"\nStill nothing.')]
    targets = format_demonstrations(items, [bare] * 40, budget, random.Random(0), stop_fraction=1.0)
    assert all(t.startswith("<important_info>[]</important_info>\n<query>") for t in targets)
    # off: the demonstrations are those of before (search turns carry no tag; random keeps)
    off = format_demonstrations(items, [docs] * 40, RolloutConfig(keep_per_turn=1, select_initial=False),
                                random.Random(0), follow_fraction=0.5)
    assert off == format_demonstrations(items, [docs] * 40, RolloutConfig(keep_per_turn=1), random.Random(0),
                                        follow_fraction=0.5)
    assert any(t.startswith("<query>") for t in off)


def test_sft_step_lowers_target_loss_and_ignores_prompt(model_tok):
    model, tok = model_tok
    prompts = [_ids(tok, "<question>who founded the company?</question>"), _ids(tok, "<question>river</question>")]
    targets = ['<query>{"query": "who founded"}</query>', END]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [sft_step(model, tok, prompts, targets, opt) for _ in range(8)]
    assert losses[-1] < losses[0] * 0.8, losses
    # the prompt is not a target: a wildly different prompt gives the same loss definition (finite)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        sft_step(model, tok, [[]], ["x"], opt)


def test_token_logprobs_match_a_plain_full_forward(tiny):
    """The prompt-skipping LM head and chunking give the same log-probs as one full forward."""
    model, tok = tiny
    trajs = _group(tok)
    trajs[2] = _traj(tok, "q1", "<question>a much longer question about the town mayor?</question>", BAD, ENV, END, 0.0)
    batch = collate(trajs, tok.pad_token_id)
    got = token_logprobs(model, batch, temperature=0.7, chunk_size=3)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1] / 0.7
        full = torch.log_softmax(logits.float(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    m = batch.loss_mask.bool()
    assert torch.allclose(got[m], full[m], atol=1e-5)


def test_flat_step_is_skipped_only_while_the_policy_equals_its_reference():
    """All-equal rewards and policy == reference: the loss is exactly flat, so nothing runs.
    Once the policy has moved, the KL term has a gradient and the step must run."""
    import copy

    from s3_ray.config import TrainConfig
    from s3_ray.models import load_causal_lm
    from s3_ray.rl.algo.update import PolicyUpdater
    from s3_ray.types import QAItem, Trajectory

    model, tok = load_causal_lm("tiny-random", for_training=True)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    upd = PolicyUpdater(model, ref, TrainConfig(lr=1e-2, kl_coef=0.1), pad_id=tok.pad_token_id)
    item = QAItem("q", "q?", ("a",))

    def trajs(rewards):
        out = []
        for r in rewards:
            t = Trajectory(item=item, prompt_ids=[5, 6, 7], response_ids=[8, 9, 10], loss_mask=[1, 1, 1])
            t.reward = r
            out.append(t)
        return out

    before = [p.detach().clone() for p in model.parameters()]
    m = upd.step(trajs([0.0, 0.0]))
    assert m["update_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    m = upd.step(trajs([0.0, 1.0]))
    assert m["update_skipped"] == 0.0 and upd.moved_from_ref
    moved = [p.detach().clone() for p in model.parameters()]
    m = upd.step(trajs([1.0, 1.0]))  # flat PG, but the KL term now pulls back: must run
    assert m["update_skipped"] == 0.0 and m["kl"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(moved, model.parameters()))
    assert PolicyUpdater(model, ref, TrainConfig(), tok.pad_token_id).moved_from_ref is False
    upd2 = PolicyUpdater(model, ref, TrainConfig(), tok.pad_token_id)
    upd2.load_state_dict(upd.state_dict())
    assert upd2.moved_from_ref


def test_rloo_advantages_and_micro_batch_from_config(model_tok):
    from s3_ray.rl.algo.advantages import rloo_advantages

    model, tok = model_tok
    trajs = _group(tok)
    trajs[3].reward = 0.5  # rewards 1, 1, 0, 0.5 in one group
    up = PolicyUpdater(model, None, _cfg(algorithm="rloo", micro_batch=3), pad_id=tok.pad_token_id)
    assert up.micro_batch == 3
    batch = collate(trajs, tok.pad_token_id)
    mask = batch.loss_mask.float()
    adv, returns = up._advantages(batch, mask, None)
    expected = rloo_advantages(batch.rewards, batch.group_ids)
    assert returns is None
    assert expected.tolist() == pytest.approx([1.0 - 0.5, 1.0 - 0.5, 0.0 - 2.5 / 3, 0.5 - 2.0 / 3])
    assert torch.allclose(adv, expected.unsqueeze(-1) * mask)
    before = _seq_logp(model, tok, trajs)
    for _ in range(3):
        up.step(trajs)
    gain = _seq_logp(model, tok, trajs) - before
    assert gain[0] > gain[2] + 0.5, gain


def test_non_finite_gradient_skips_the_optimiser_step(model_tok):
    model, tok = model_tok
    trajs = _group(tok)
    trajs[0].reward = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    metrics = PolicyUpdater(model, None, _cfg(), pad_id=tok.pad_token_id).step(trajs)
    assert metrics["nonfinite_grad"] == 1.0 and metrics["loss"] != metrics["loss"]  # NaN
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _assert_sharing_changes_nothing(model, ids, mask, start: int) -> None:
    """Log-probs, entropies and parameter gradients of `grid_logprobs` from `start` are the same
    (float tolerance) whether the rows' common prefix is read once or once per row."""
    import copy

    from s3_ray.rl.algo.batch import grid_logprobs

    grads = []
    for share in (False, True):
        m = copy.deepcopy(model)
        out = grid_logprobs(m, ids, mask, 1.0, start, entropy=True, share_prefix=share, chunk=5)
        ((out.logprobs + 0.1 * out.entropy) * mask[:, start + 1:]).sum().backward()
        grads.append(({n: p.grad.clone() for n, p in m.named_parameters()},
                      torch.cat([out.logprobs, out.entropy]).detach()))
    (g0, l0), (g1, l1) = grads
    assert torch.allclose(l0, l1, atol=1e-4)
    assert all(torch.allclose(g0[n], g1[n], atol=1e-5, rtol=1e-4) for n in g0)


def test_a_shared_prefix_is_read_once_with_the_same_logits_and_gradients():
    """Rows that start alike (a GRPO group's prompt) give the same log-probs and parameter
    gradients whether the shared prefix is read once or once per row."""
    from s3_ray.rl.algo.batch import can_share_prefix, common_prefix

    model, tok = load_causal_lm("tiny-random", for_training=True)
    prompt = tok.encode("Who founded Holt Company? Doc 1 Holt Company makes rope.", add_special_tokens=False)
    rows = [prompt + tok.encode(t, add_special_tokens=False) for t in ("the answer", "a longer reply here", "x")]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    assert common_prefix(ids, mask) == len(prompt) and can_share_prefix(model)
    start = len(prompt) - 1
    _assert_sharing_changes_nothing(model, ids, mask, start)


def test_a_prefix_shared_across_groups_gives_the_same_gradients():
    """Rows of two groups (two questions) share only the instruction header: reading that header
    once gives the log-probs and parameter gradients of the unshared computation."""
    from s3_ray.rl.algo.batch import common_prefix

    model, tok = load_causal_lm("tiny-random", for_training=True)
    header = tok.encode("Answer with tags. <question>", add_special_tokens=False)
    prompts = [header + tok.encode(q, add_special_tokens=False) for q in ("Who founded Holt?", "Where is Mabun?")]
    rows = [prompts[i % 2] + tok.encode(t, add_special_tokens=False)
            for i, t in enumerate(("the answer", "a longer reply here", "x", "yes no"))]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    shared = common_prefix(ids, mask)
    assert len(header) <= shared < min(map(len, prompts))
    start = min(map(len, prompts)) - 1
    _assert_sharing_changes_nothing(model, ids, mask, start)
