"""Batched rollout driven by scripted and tiny-random policies against the fake retriever."""

from __future__ import annotations

import re

import pytest
import torch

from fakes import FakeRetriever
from s3_ray.agent.policy import HFPolicy, ScriptedPolicy, _stopping_criteria, stop_length
from s3_ray.agent.prompt import MARKER, build_searcher_messages, encode_prompt
from s3_ray.agent.protocol import NUDGE, render_information
from s3_ray.agent.rollout import rollout_stats, run_rollout
from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.models import load_causal_lm
from s3_ray.types import QAItem, Trajectory


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random")


ITEMS = [
    QAItem("easy", "Where does the river Wend flow?", ("Alder Town",)),
    QAItem("multi", "Who founded the company in Birch Falls?", ("Clara Holt",)),
    QAItem("messy", "Which harbour town has no river?", ("Dune Port",)),
]
BUDGET = RolloutConfig(init_k=2, top_k=3, keep_per_turn=2, max_turns=2)
SEARCHER = SearcherConfig(model="tiny-random", max_new_tokens=24, temperature=0.0, max_prompt_tokens=4096)


def _response_so_far(text: str) -> str:
    return text.split("<|im_start|>assistant\n", 1)[1]


def _script(text: str) -> str:
    """One behaviour per question, keyed on the question and on the blocks seen so far."""
    done_blocks = _response_so_far(text).count("</information>")
    nudges = _response_so_far(text).count(NUDGE)
    if "<question>\nWhere does the river" in text:
        return "<think>init docs suffice</think><search_complete>True</search_complete>"
    if "<question>\nWho founded" in text:
        if done_blocks == 0:
            return '<search_complete>False</search_complete><query>{"query": "Holt company founded"}</query>'
        if done_blocks == 1:
            return ('<important_info>[1, 2, 3]</important_info><search_complete>False</search_complete>'
                    '<query>{"query": "Clara Holt born"}</query><information>Doc 1(Title: fake)</information>')
        return "<important_info>[2]</important_info><search_complete>True</search_complete>"
    # messy: an invalid turn, then a query that is not JSON, then it never completes
    if nudges == 0 and done_blocks == 0:
        return "I think the answer is Dune Port."
    return "<important_info>[9]</important_info><query>harbour town river</query>"


def _segments(traj: Trajectory) -> list[tuple[int, list[int]]]:
    runs: list[tuple[int, list[int]]] = []
    for tok, m in zip(traj.response_ids, traj.loss_mask):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(tok)
        else:
            runs.append((m, [tok]))
    return runs


def test_full_episodes_budgets_and_batching(tiny):
    _, tok = tiny
    retriever = FakeRetriever()
    policy = ScriptedPolicy(tok, _script)
    trajs = run_rollout(ITEMS, policy, tok, retriever, BUDGET, SEARCHER)
    easy, multi, messy = trajs

    # one init call for all questions, then one call per turn in which anyone searched
    assert retriever.calls[0] == ([it.question for it in ITEMS], BUDGET.init_k)
    per_turn = [qs for qs, _ in retriever.calls[1:]]
    assert per_turn == [
        ["Holt company founded"],                                   # turn 1: messy was invalid
        ["Clara Holt born", "harbour town river"],                  # turn 2: both search together
        ["harbour town river"],                                     # turn 3: multi completed
    ]
    assert policy.stats.calls == 4 and policy.stats.sequences == 3 + 2 + 2 + 1

    assert easy.turns[0].complete and easy.metrics["searches"] == 0
    assert [p.id for p in easy.context] == [p.id for p in easy.init_passages] and len(easy.context) == 2

    assert multi.metrics["searches"] == 2 and multi.turns[-1].complete
    # keep_per_turn=2 cuts the 3 named ids; the hallucinated <information> after </query> is ignored
    assert multi.turns[1].selected_ids == multi.turns[0].retrieved_ids[:2]
    assert multi.turns[2].selected_ids == [multi.turns[1].retrieved_ids[1]]
    assert len(multi.context) == 2 + 2 + 1

    assert [t.malformed for t in messy.turns] == ["no_action", "bad_json", "bad_json", "bad_json"]
    assert messy.metrics["searches"] == BUDGET.max_turns and messy.turns[-1].query is None
    assert messy.metrics["malformed"] == 4 and messy.metrics["turns"] == 4

    for t in trajs:
        ids = [p.id for p in t.init_passages] + [i for turn in t.turns for i in turn.retrieved_ids]
        assert len(ids) == len(set(ids))  # nothing shown twice within an episode
        assert all(len(turn.retrieved_ids) <= BUDGET.top_k for turn in t.turns)
        assert all(len(turn.selected_ids) <= BUDGET.keep_per_turn for turn in t.turns)
        assert len(t.turns) <= 2 * (BUDGET.max_turns + 1)
        assert len(t.context) <= BUDGET.init_k + BUDGET.max_turns * BUDGET.keep_per_turn
        assert t.metrics["response_tokens"] == len(t.response_ids) == len(t.loss_mask)
    # every request asked for enough hits to survive dedup
    assert all(k >= BUDGET.top_k + BUDGET.init_k for _, k in retriever.calls[1:])


def test_loss_mask_lines_up_with_turns_and_env_text(tiny):
    _, tok = tiny
    trajs = run_rollout(ITEMS, ScriptedPolicy(tok, _script), tok, FakeRetriever(), BUDGET, SEARCHER)
    for t in trajs:
        expected: list[tuple[int, str]] = []
        for n, turn in enumerate(t.turns):
            expected.append((1, turn.text))
            if turn.query is not None:
                docs = {p.id: p for p in _all_passages()}
                expected.append((0, render_information([docs[i] for i in turn.retrieved_ids])))
            elif n < len(t.turns) - 1:
                expected.append((0, NUDGE))
        got = [(m, tok.decode(ids)) for m, ids in _segments(t)]
        assert got == expected
        # prompt_ids + response_ids decode to the whole dialogue that the policy saw
        assert tok.decode(t.prompt_ids + t.response_ids).startswith(tok.decode(t.prompt_ids))
        assert MARKER in tok.decode(t.prompt_ids)


def _all_passages():
    from fakes import FAKE_PASSAGES

    return FAKE_PASSAGES


def test_given_init_passages_skip_the_init_call_and_policy_sees_the_trajectory(tiny):
    _, tok = tiny
    seen: list[str] = []

    def script(text: str) -> str:
        seen.append(text)
        return "<search_complete>True</search_complete>" if "</information>" in _response_so_far(text) else (
            '<query>{"query": "river"}</query>')

    retriever = FakeRetriever()
    init = [[p] for p in _all_passages()[:2]]
    trajs = run_rollout(ITEMS[:2], ScriptedPolicy(tok, script), tok, retriever, BUDGET, SEARCHER, init)
    assert len(retriever.calls) == 1 and retriever.calls[0][1] == BUDGET.top_k + 1
    # the second generation's input is exactly prompt + first turn + observation
    t = trajs[0]
    first_turn_len = t.loss_mask.index(0)
    obs_end = first_turn_len + t.loss_mask[first_turn_len:].index(1)
    assert seen[2] == tok.decode(t.prompt_ids + t.response_ids[:obs_end])
    assert t.prompt_ids == encode_prompt(tok, build_searcher_messages(ITEMS[0].question, init[0], BUDGET))


def test_rollout_rejects_mismatched_init_and_bad_retriever(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="init_passages has 1 lists for 3 items"):
        run_rollout(ITEMS, ScriptedPolicy(tok, _script), tok, FakeRetriever(), BUDGET, SEARCHER, [[]])

    class Short(FakeRetriever):
        def search(self, queries, k):
            return super().search(queries, k)[:-1]

    with pytest.raises(ValueError, match="returned 2 hit lists for 3 queries"):
        run_rollout(ITEMS, ScriptedPolicy(tok, _script), tok, Short(), BUDGET, SEARCHER)


def test_rollout_stats(tiny):
    _, tok = tiny
    trajs = run_rollout(ITEMS, ScriptedPolicy(tok, _script), tok, FakeRetriever(), BUDGET, SEARCHER)
    s = rollout_stats(trajs)
    assert s["searches_mean"] == pytest.approx((0 + 2 + 2) / 3)
    assert s["turns_mean"] == pytest.approx((1 + 3 + 4) / 3)
    assert s["malformed_rate"] == pytest.approx((0 + 0 + 4) / 8)
    assert s["completed_mean"] == pytest.approx(2 / 3)
    assert rollout_stats([]) == {}


# ---------------------------------------------------------------- HFPolicy with tiny-random


def test_stopping_criterion_per_row_ignores_the_prompt(tiny):
    _, tok = tiny
    prompt = tok.encode('old turn <query>{"query": "x"}</query> ', add_special_tokens=False)
    gens = [
        '<query>{"query": "y"}</query>',
        "<search_complete>False</search_complete>",
        "<search_complete> True </search_complete>",
        "just words",
    ]
    gen_ids = [tok.encode(g, add_special_tokens=False) for g in gens]
    width = max(map(len, gen_ids))
    # as during generation: a shared prompt, then equal-length generated parts (finished rows pad)
    ids = torch.tensor([prompt + g + [tok.pad_token_id] * (width - len(g)) for g in gen_ids])
    assert _stopping_criteria(tok, len(prompt))(ids, None).tolist() == [True, False, True, False]
    # the prompt alone (which holds a </query>) never stops a row
    assert _stopping_criteria(tok, len(prompt))(torch.tensor([prompt]), None).tolist() == [False]
    full = tok.encode('<query>{"query": "y"}</query> more', add_special_tokens=False)
    assert stop_length(tok, full) == len(gen_ids[0]) and stop_length(tok, gen_ids[3]) is None


def _force(model, scripts: list[list[int]], eos: int):
    """Make the model emit `scripts[row]` token by token (eos afterwards) via an lm_head hook."""
    step = {"n": 0}

    def hook(_module, _inputs, logits):
        forced = torch.full_like(logits[:, -1, :], -1e4)
        for row, script in enumerate(scripts):
            forced[row, script[step["n"]] if step["n"] < len(script) else eos] = 1e4
        step["n"] += 1
        out = logits.clone()
        out[:, -1, :] = forced
        return out

    return model.lm_head.register_forward_hook(hook), step


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_hf_policy_stops_each_row_at_its_tag(tiny, temperature):
    model, tok = tiny
    texts = [
        '<query>{"query": "river"}</query> and then more words about the town',
        "<important_info>[1]</important_info><search_complete>True</search_complete> the founder was",
        "the town of the river and the company of the founder who was born in the year " * 3,
    ]
    scripts = [tok.encode(t, add_special_tokens=False) for t in texts]
    cfg = SEARCHER.model_copy(update={"temperature": temperature, "max_new_tokens": 30})
    policy = HFPolicy(model, tok, cfg)
    prompts = [tok.encode("<|im_start|>user\nq<|im_end|>\n", add_special_tokens=False), [5, 6, 7]]
    handle, _ = _force(model, scripts, tok.eos_token_id)
    try:
        out = policy.generate([prompts[0], prompts[1], prompts[0]])
    finally:
        handle.remove()
    assert tok.decode(out[0]) == '<query>{"query": "river"}</query>'
    assert tok.decode(out[1]) == "<important_info>[1]</important_info><search_complete>True</search_complete>"
    assert out[2] == scripts[2][:30]  # no tag: runs to max_new_tokens
    assert policy.stats.calls == 1 and policy.stats.tokens_generated == sum(map(len, out))

    # when every row has stopped, generation itself ends (not just the trimming afterwards)
    handle, steps = _force(model, scripts[:2], tok.eos_token_id)
    try:
        out = policy.generate([prompts[0], prompts[1]])
    finally:
        handle.remove()
    assert steps["n"] == max(len(o) for o in out) < cfg.max_new_tokens


def test_hf_policy_random_model_generates_and_rollout_terminates(tiny):
    model, tok = tiny
    cfg = SEARCHER.model_copy(update={"temperature": 0.7, "max_new_tokens": 8, "max_prompt_tokens": 64})
    policy = HFPolicy(model, tok, cfg)
    long_seq = list(range(3, 200))  # longer than max_prompt_tokens: left-truncated, still runs
    out = policy.generate([long_seq, [5, 6]])
    assert len(out) == 2 and all(len(o) <= 8 for o in out)
    assert all(not o or o[-1] not in (tok.pad_token_id, tok.eos_token_id) for o in out)
    budget = RolloutConfig(init_k=1, top_k=2, keep_per_turn=1, max_turns=1)
    trajs = run_rollout(ITEMS[:2], policy, tok, FakeRetriever(), budget, cfg)
    env_text = re.compile(r"(\n<information>.*?</information>\n|" + re.escape(NUDGE) + ")+", re.DOTALL)
    for t in trajs:
        assert 1 <= len(t.turns) <= 2 * (budget.max_turns + 1)
        assert len(t.response_ids) == len(t.loss_mask)
        assert sum(t.loss_mask) <= len(t.turns) * cfg.max_new_tokens
        for mask, ids in _segments(t):
            if mask == 0:
                assert env_text.fullmatch(tok.decode(ids))


def test_kv_cache_reuse_across_turns_changes_speed_not_tokens(tiny):
    """A rollout that keeps the KV cache between turns writes exactly the tokens of one that
    re-reads every episode in full each turn, and feeds the model far fewer prompt positions."""
    model, tok = tiny
    cfg = SEARCHER.model_copy(update={"max_new_tokens": 12})
    runs = {}
    for reuse in (False, True):
        policy = HFPolicy(model, tok, cfg, reuse_cache=reuse)
        trajs = run_rollout(ITEMS, policy, tok, FakeRetriever(), BUDGET, cfg)
        runs[reuse] = (trajs, policy)
    (plain, p0), (cached, p1) = runs[False], runs[True]
    assert p0.stats.calls == p1.stats.calls >= 3  # several turns: the cache had something to reuse
    for a, b in zip(plain, cached):
        assert a.response_ids == b.response_ids and a.loss_mask == b.loss_mask
    assert p1.prefill_tokens < 0.6 * p0.prefill_tokens
    assert p1._cache is None  # released when the rollout ends


def test_a_group_shares_its_prompt_prefill_and_decodes_the_same(tiny):
    """Rows that start from the same prompt (a GRPO group) read it once: greedy turns equal a full
    prefill of every row, over a whole multi-turn rollout, with far fewer positions read."""
    model, tok = tiny
    cfg = SEARCHER.model_copy(update={"max_new_tokens": 12, "temperature": 0.0})
    group = [it for it in ITEMS[:2] for _ in range(4)]
    runs = {}
    for share in (False, True):
        policy = HFPolicy(model, tok, cfg, share_prefill=share)
        runs[share] = (run_rollout(group, policy, tok, FakeRetriever(), BUDGET, cfg), policy)
    (plain, p0), (shared, p1) = runs[False], runs[True]
    for a, b in zip(plain, shared):
        assert a.response_ids == b.response_ids and a.loss_mask == b.loss_mask
    assert p1.prefill_tokens < p0.prefill_tokens
    assert p1.stats.prefill_tokens == p1.prefill_tokens and p1.stats.prefill_seconds > 0
    assert p1.stats.as_dict()["decode_seconds"] > 0


def test_distinct_prompts_share_their_common_instruction_prefill(tiny):
    """Different questions open with the same instruction: a batch reads it once, and greedy turns
    equal a full left-padded prefill of every row over a whole multi-turn rollout."""
    from s3_ray.agent.policy import MIN_SHARED_PREFIX, _common_prefix

    model, tok = tiny
    cfg = SEARCHER.model_copy(update={"max_new_tokens": 12, "temperature": 0.0})
    runs = {}
    for share in (False, True):
        policy = HFPolicy(model, tok, cfg, share_prefill=share)
        first_call: list[int] = []
        policy.generate = _recording(policy.generate, first_call, policy)
        runs[share] = (run_rollout(ITEMS, policy, tok, FakeRetriever(), BUDGET, cfg), policy, first_call)
    (plain, p0, fed0), (shared, p1, fed1) = runs[False], runs[True]
    prompts = [t.prompt_ids for t in plain]
    common = _common_prefix(prompts)
    assert common >= MIN_SHARED_PREFIX and len({tuple(p) for p in prompts}) == len(ITEMS)
    for a, b in zip(plain, shared):
        assert a.response_ids == b.response_ids and a.loss_mask == b.loss_mask
    # the first call read the common prefix once instead of once per row
    assert fed0[0] - fed1[0] == (len(ITEMS) - 1) * common
    assert p1.prefill_tokens < p0.prefill_tokens


def _recording(generate, fed: list[int], policy):
    """Wrap `policy.generate` to note the positions each call reads."""
    def wrapped(seqs):
        before = policy.prefill_tokens
        out = generate(seqs)
        fed.append(policy.prefill_tokens - before)
        return out
    return wrapped


def test_turn_cache_falls_back_to_a_full_prefill(tiny):
    """Sequences that extend no cached row (a new batch) or a layout grown too wide start over."""
    model, tok = tiny
    policy = HFPolicy(model, tok, SEARCHER.model_copy(update={"max_new_tokens": 4}))
    first = policy.generate([[5, 6, 7], [8, 9]])
    assert policy._cache is not None and policy._cache.rows[0][:3] == [5, 6, 7]
    fed = policy.prefill_tokens
    policy.generate([[5, 6, 7] + first[0] + [11, 12]])  # extends row 0: only the new tokens are fed
    assert policy.prefill_tokens - fed <= 2 + len(first[0])
    fed = policy.prefill_tokens
    policy.generate([[1, 2, 3, 4]])  # a new batch
    assert policy.prefill_tokens - fed == 4
    cache = policy._cache
    assert cache.extend([cache.rows[0] + [3]], tok.pad_token_id, max_width=cache.width) is None


def test_closing_ids_hold_the_last_token_of_every_stop_tag(tiny):
    from s3_ray.agent.policy import closing_ids

    _, tok = tiny
    ids = set(closing_ids(tok).tolist())
    for text in ('<query>{"query": "x"}</query>', "<search_complete>True</search_complete>",
                 "<search_complete> yes </search_complete>"):
        assert tok.encode(text, add_special_tokens=False)[-1] in ids
    assert tok.encode(" the", add_special_tokens=False)[-1] not in ids
    assert 0 < len(ids) < len(tok) // 2
