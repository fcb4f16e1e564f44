"""`rollout.select_initial`: the searcher selects among the initial documents too. Off (the default,
s3 as shipped) the prompt and the generator's context are byte for byte what they were; on, only the
initial documents the first turn keeps reach the generator, the prompt says so, and the RL proof's
oracle keeps their evidence."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fakes import FAKE_PASSAGES
from s3_ray.agent.policy import ScriptedPolicy
from s3_ray.agent.prompt import INSTRUCTION, INSTRUCTION_SELECT_INITIAL, build_searcher_messages
from s3_ray.agent.rollout import run_rollout
from s3_ray.config import ConfigError, RolloutConfig, SearcherConfig, load_config
from s3_ray.models import load_causal_lm
from s3_ray.types import Passage, QAItem, SearchHit

REPO = Path(__file__).resolve().parents[2]
P = {p.id: p for p in FAKE_PASSAGES}
SEARCHER = SearcherConfig(model="tiny-random", max_new_tokens=24, temperature=0.0, max_prompt_tokens=4096)

# The prompt as it was before the setting existed (defaults: keep_per_turn 2, max_turns 2, top_k 3).
DEFAULT_PROMPT = (
    "You collect documents for a separate answer model; do not answer the question yourself. If the "
    "documents below are enough, write <search_complete>True</search_complete>. Otherwise search: "
    '<query>{"query": "your query"}</query>. Results arrive in <information>, numbered from Doc 1. Next '
    "turn, keep the useful ones of that block (at most 2), e.g. <important_info>[1, 2]</important_info>, "
    "then either search again or write <search_complete>True</search_complete>. Only kept documents reach "
    "the answer model. At most 2 searches of 3 new documents each.\n\n"
    "Now, start the loop with the following question and initial searched results:\n"
    "<question>\nWhere does the river Wend flow?\n</question>\n"
    "<information>\nDoc 1(Title: Alder Town) Alder Town lies on the river Wend and was founded in 1820.\n"
    "Doc 2(Title: Dune Port) Dune Port is a harbour town with no river.\n</information>"
)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random")


class FixedRetriever:
    """The question gets `init`; any other query gets `rest` (both in this order)."""

    def __init__(self, init: list[Passage], rest: list[Passage]) -> None:
        self.init, self.rest = init, rest

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        return [[SearchHit(p, 1.0) for p in (self.init if q.endswith("?") else self.rest)[:k]] for q in queries]


def test_off_the_prompt_is_byte_identical_to_the_one_before_the_setting():
    docs = [P["p1"], P["p7"]]
    for budget in (RolloutConfig(), RolloutConfig(select_initial=False)):
        [msg] = build_searcher_messages("Where does the river Wend flow?", docs, budget)
        assert msg == {"role": "user", "content": DEFAULT_PROMPT}


def test_on_the_prompt_says_only_kept_initial_documents_reach_the_answer_model():
    [msg] = build_searcher_messages("Where does the river Wend flow?", [P["p1"], P["p7"]],
                                    RolloutConfig(select_initial=True, keep_per_turn=1))
    head = INSTRUCTION_SELECT_INITIAL.format(keep_per_turn=1, max_turns=2, top_k=3)
    assert msg["content"].startswith(head + "\n\nNow, start the loop") and msg["content"] != DEFAULT_PROMPT
    assert "the documents below included" in head and "(at most 1)" in head
    assert msg["content"].endswith(DEFAULT_PROMPT[DEFAULT_PROMPT.index("\n\nNow, start"):])
    assert INSTRUCTION_SELECT_INITIAL != INSTRUCTION


def test_the_setting_is_validated_and_off_by_default_and_in_the_paper_config():
    assert RolloutConfig().select_initial is False
    assert load_config(REPO / "jobs" / "configs" / "s3_paper.yaml").rollout.select_initial is False
    assert load_config(None, ["rollout.select_initial=true"]).rollout.select_initial is True
    with pytest.raises(ConfigError, match=r"rollout\.select_initial"):
        load_config(None, ["rollout.select_initial=perhaps"])
    with pytest.raises(ConfigError, match="select_initial needs rollout.keep_per_turn >= 1"):
        load_config(None, ["rollout.select_initial=true", "rollout.keep_per_turn=0"])


def _rollout(tok, budget: RolloutConfig, turn: str):
    item = QAItem("q", "Where does the river Wend flow?", ("Alder Town",))
    retriever = FixedRetriever([P["p1"], P["p7"], P["p2"]], [P["p3"]])
    return run_rollout([item], ScriptedPolicy(tok, lambda text: turn), tok, retriever, budget, SEARCHER)[0]


def test_rollout_context_off_is_every_initial_document_and_on_only_the_kept_ones(tiny):
    _, tok = tiny
    stop = "<important_info>[3]</important_info><search_complete>True</search_complete>"
    off = _rollout(tok, RolloutConfig(init_k=3), stop)
    assert [p.id for p in off.context] == ["p1", "p7", "p2"] and off.turns[0].selected_ids == []
    assert DEFAULT_PROMPT.split(" Next turn")[0] in tok.decode(off.prompt_ids)
    on = _rollout(tok, RolloutConfig(init_k=3, select_initial=True), stop)
    assert [p.id for p in on.context] == ["p2"] and on.turns[0].selected_ids == ["p2"]
    assert on.metrics["context_docs"] == 1.0 and on.turns[0].malformed is None
    assert "the documents below included" in tok.decode(on.prompt_ids)
    # an id beyond the initial block is malformed, as it was, and keeps nothing
    bad = _rollout(tok, RolloutConfig(init_k=3, select_initial=True),
                   "<important_info>[4]</important_info><search_complete>True</search_complete>")
    assert bad.turns[0].malformed == "ids_out_of_range" and bad.context == []


def _rl_proof():
    path = REPO / "benchmarks" / "rl" / "rl_proof.py"
    spec = importlib.util.spec_from_file_location("rl_proof_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("select", [False, True])
def test_proof_oracle_keeps_the_evidence_of_the_initial_documents_only_when_selecting(tiny, select):
    rl_proof = _rl_proof()
    _, tok = tiny
    bridge = QAItem("b", "Who is the mayor of the town where Cedar Works is headquartered?", ("Clara Holt",),
                    {"type": "bridge", "support": ["p6", "p3"]})
    single = QAItem("s", "Where does the river Wend flow?", ("Alder Town",), {"type": "single", "support": ["p1"]})
    cfg = load_config(None, ["rollout.init_k=3", f"rollout.select_initial={str(select).lower()}"])
    oracle = object.__new__(rl_proof.OracleSearcher)  # its __init__ reads the corpus and loads the model
    oracle.cfg, oracle.tok = cfg.model_copy(update={"searcher": SEARCHER}), tok
    oracle.retriever = FixedRetriever([P["p7"], P["p6"], P["p1"]], [P["p3"], P["p5"], P["p8"]])
    oracle.initial = {} if select else None
    titles = {p.id: p.title for p in FAKE_PASSAGES}
    script = rl_proof.oracle_script({it.question: it for it in (bridge, single)}, titles, oracle.initial)
    oracle.policy = ScriptedPolicy(tok, script)
    out_bridge, out_single = oracle.contexts([bridge, single])
    assert out_bridge.searches == 1 and out_bridge.trace[1].selected_ids == ["p3", "p5"]
    if select:  # p6 is the bridge's supporting passage; p1 the single question's (and names its answer)
        assert [p.id for p in out_bridge.passages] == ["p6", "p3", "p5"]
        assert [p.id for p in out_single.passages] == ["p1"]
        assert oracle.initial == {bridge.question: [2], single.question: [3]}
    else:  # as before: every initial document, whatever the first turn names
        assert [p.id for p in out_bridge.passages] == ["p7", "p6", "p1", "p3", "p5"]
        assert [p.id for p in out_single.passages] == ["p7", "p6", "p1"]
        assert out_bridge.trace[0].text.startswith("<important_info>[1, 2]</important_info>")
