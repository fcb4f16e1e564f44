"""Gain Beyond RAG, the baseline cache (settings, missing ids, crash-resume) and the s3 filter."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import pytest

from s3_ray.config import RewardConfig, load_config
from s3_ray.generation import build_answer_messages
from s3_ray.reward import (
    BaselineCache,
    BaselineError,
    BaselineMissing,
    BaselineRecord,
    BaselineSettings,
    RewardScorer,
    baseline_settings,
    filter_unanswered,
    gain_beyond_baseline,
    open_baseline,
    precompute_baseline,
)
from s3_ray.types import Passage, QAItem, SearchHit, Trajectory

SETTINGS = BaselineSettings(generator="fake-gen", init_k=2, retriever="fake-index", backend="transformers",
                            decoding="max_new_tokens=24 max_context_tokens=768 temperature=0.0 fit=tokenizer")


class FakeRetriever:
    """Returns k passages whose text is the question itself; counts queries."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        self.queries.extend(queries)
        return [[SearchHit(Passage(f"{q}#{i}", f'"T{i}"\n{q}'), 1.0 / (i + 1)) for i in range(k)] for q in queries]


class FakeClient:
    """Generator-client stand-in: answers from a table keyed by question; optional failure on call N."""

    def __init__(self, answers: dict[str, str], fail_on_call: int | None = None, judge_says: str = "no") -> None:
        self.answers = answers
        self.fail_on_call = fail_on_call
        self.judge_says = judge_says
        self.answered: list[str] = []
        self.contexts: list[list[Passage]] = []
        self.answer_calls = 0
        self.judge_prompts: list[list[dict[str, str]]] = []

    @property
    def model_id(self) -> str:
        return "fake-gen"

    def answer(self, questions: Sequence[str], contexts: Sequence[Sequence[Passage]]) -> list[str]:
        self.answer_calls += 1
        if self.fail_on_call is not None and self.answer_calls == self.fail_on_call:
            raise RuntimeError("generator crashed")
        for q, c in zip(questions, contexts):
            build_answer_messages(q, list(c))  # the real client would build these
        self.answered.extend(questions)
        self.contexts.extend(list(c) for c in contexts)
        return [self.answers.get(q, "no idea") for q in questions]

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        self.judge_prompts.extend(prompts)
        return [self.judge_says] * len(prompts)


def items(n: int) -> list[QAItem]:
    return [QAItem(f"q{i}", f"question {i}?", (f"gold{i}",)) for i in range(n)]


def rec(qid: str, acc: float) -> BaselineRecord:
    return BaselineRecord(id=qid, question=f"{qid}?", answer="a", genacc=acc, em=0.0, context_ids=[])


# gain -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("acc", "base", "gbr", "with_acc"), [(1, 0, 1.0, 2.0), (1, 1, 0.0, 1.0), (0, 0, 0.0, 0.0), (0, 1, -1.0, -1.0)]
)
def test_gain_table_matches_s3(acc: float, base: float, gbr: float, with_acc: float) -> None:
    assert gain_beyond_baseline(acc, base) == gbr
    assert gain_beyond_baseline(acc, base, add_accuracy=True) == with_acc


def _traj(it: QAItem, context: list[Passage]) -> Trajectory:
    return Trajectory(item=it, prompt_ids=[1, 2], context=context)


def _scorer_setup(tmp_path, judge: bool = False) -> tuple[list[QAItem], BaselineCache]:
    qs = items(4)
    cache = BaselineCache(tmp_path / "b.jsonl", replace(SETTINGS, judge=judge))
    cache.append([rec("q0", 0.0), rec("q1", 1.0), rec("q2", 0.0), rec("q3", 1.0)])
    return qs, cache


def test_reward_scorer_values_signs_and_metrics(tmp_path) -> None:
    qs, cache = _scorer_setup(tmp_path)
    client = FakeClient({"question 0?": "It is gold0.", "question 1?": "gold1", "question 2?": "wrong",
                         "question 3?": "wrong"})
    ctx = [Passage("a", '"A"\nx'), Passage("b", '"B"\ny'), Passage("a", '"A"\nx')]
    trajs = [_traj(it, ctx) for it in qs]
    results = RewardScorer(client, cache, RewardConfig()).score(trajs)
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, -1.0]
    assert client.answer_calls == 1 and client.answered == [it.question for it in qs]
    assert client.contexts[0] == ctx
    m0, m3 = results[0].metrics, results[3].metrics
    assert (m0["genacc"], m0["baseline_genacc"], m0["gbr"], m0["em"]) == (1.0, 0.0, 1.0, 0.0)
    assert m0["f1"] == pytest.approx(0.5) and m0["context_docs"] == 2.0
    assert (m3["genacc"], m3["baseline_genacc"], m3["gbr"]) == (0.0, 1.0, -1.0)
    # the reward is returned, never written into the trajectories
    assert all(t.reward == 0.0 and t.metrics == {} for t in trajs)
    trajs2 = [_traj(it, ctx) for it in qs]
    results2 = RewardScorer(client, cache, RewardConfig(add_accuracy=True)).score(trajs2)
    assert [r.reward for r in results2] == [2.0, 1.0, 0.0, -1.0]
    assert results2[0].metrics["gbr"] == 1.0  # gbr stays the pure difference


def test_format_penalty_hits_only_episodes_with_a_malformed_turn(tmp_path) -> None:
    from s3_ray.types import TurnRecord

    qs, cache = _scorer_setup(tmp_path)
    client = FakeClient({"question 0?": "gold0", "question 1?": "gold1", "question 2?": "wrong", "question 3?": "x"})
    ctx = [Passage("a", '"A"\nx')]
    trajs = [_traj(it, ctx) for it in qs]
    trajs[0].turns.append(TurnRecord(text='<query>{"query": Vera"}</query>', query="Vera", malformed="bad_json"))
    trajs[2].turns.append(TurnRecord(text="<query>{\"query\": \"x\"}</query>", query="x"))
    plain = RewardScorer(client, cache, RewardConfig()).score(trajs)
    assert [r.reward for r in plain] == [1.0, 0.0, 0.0, -1.0]
    assert [r.metrics["malformed"] for r in plain] == [1.0, 0.0, 0.0, 0.0]
    fined = RewardScorer(client, cache, RewardConfig(format_penalty=0.5)).score(trajs)
    assert [r.reward for r in fined] == [0.5, 0.0, 0.0, -1.0]
    assert fined[0].metrics["gbr"] == 1.0  # the gain itself is reported unfined


def test_reward_scorer_judge_only_for_span_failures(tmp_path) -> None:
    qs, cache = _scorer_setup(tmp_path, judge=True)
    client = FakeClient({"question 0?": "gold0", "question 2?": "paraphrase"}, judge_says="Yes")
    trajs = [_traj(it, []) for it in qs]
    results = RewardScorer(client, cache, RewardConfig(use_judge=True)).score(trajs)
    assert len(client.judge_prompts) == 3  # q1..q3 failed the span check, q0 did not
    assert [r.metrics["genacc"] for r in results] == [1.0, 1.0, 1.0, 1.0]


def test_reward_scorer_missing_baseline_fails_before_generating(tmp_path) -> None:
    qs, cache = _scorer_setup(tmp_path)
    client = FakeClient({})
    extra = QAItem("unknown-id", "what?", ("x",))
    with pytest.raises(BaselineMissing, match=r"'unknown-id'.*b\.jsonl.*jobs\.precompute"):
        RewardScorer(client, cache, RewardConfig()).score([_traj(qs[0], []), _traj(extra, [])])
    assert client.answer_calls == 0


def test_reward_scorer_refuses_mismatched_settings(tmp_path) -> None:
    _, cache = _scorer_setup(tmp_path)
    with pytest.raises(BaselineError, match="use_judge"):
        RewardScorer(FakeClient({}), cache, RewardConfig(use_judge=True))
    with pytest.raises(BaselineError, match="zero_shot"):
        RewardScorer(FakeClient({}), cache, RewardConfig(baseline="zero_shot"))


# baseline cache ---------------------------------------------------------------------------
def test_baseline_settings_mismatch_names_the_setting(tmp_path) -> None:
    path = tmp_path / "b.jsonl"
    BaselineCache(path, SETTINGS).append([rec("q0", 1.0)])
    assert BaselineCache(path, SETTINGS).get("q0").genacc == 1.0
    with pytest.raises(BaselineError, match="init_k=2 but init_k=5"):
        BaselineCache(path, replace(SETTINGS, init_k=5))
    with pytest.raises(BaselineError, match="generator='fake-gen' but generator='other'"):
        BaselineCache(path, replace(SETTINGS, generator="other"))
    loaded = BaselineCache.load(path)
    assert loaded.settings == SETTINGS and loaded.ids() == ["q0"]


def test_baseline_settings_mismatch_on_backend_and_decoding(tmp_path) -> None:
    path = tmp_path / "b.jsonl"
    BaselineCache(path, SETTINGS).append([rec("q0", 1.0)])
    with pytest.raises(BaselineError, match="backend='transformers' but backend='openai' is expected"):
        BaselineCache(path, replace(SETTINGS, backend="openai"))
    with pytest.raises(BaselineError, match=r"decoding='max_new_tokens=24 .*' but decoding='max_new_tokens=8 "):
        BaselineCache(path, replace(SETTINGS, decoding="max_new_tokens=8 max_context_tokens=768 temperature=0.0"))


def test_baseline_header_of_an_older_version_is_refused_naming_the_key(tmp_path) -> None:
    path = tmp_path / "old.jsonl"
    old = {"generator": "fake-gen", "init_k": 2, "retriever": "fake-index", "method": "naive_rag", "judge": False}
    path.write_text(json.dumps({"type": "header", "version": 1, "settings": old}) + "\n"
                    + json.dumps(rec("q0", 1.0).__dict__) + "\n")
    with pytest.raises(BaselineError, match=r"made with backend=<not recorded> but backend='transformers' is "
                                            r"expected; delete the file .*rerun `python -m jobs.precompute`"):
        BaselineCache(path, SETTINGS)
    with pytest.raises(BaselineError, match=r"made without recording backend, decoding .*jobs\.precompute"):
        BaselineCache.load(path)
    with pytest.raises(TypeError, match="backend"):
        BaselineSettings("fake-gen", 2, "fake-index")  # type: ignore[call-arg]  # no silent default


def test_baseline_rejects_corrupt_and_duplicate_lines(tmp_path) -> None:
    path = tmp_path / "b.jsonl"
    BaselineCache(path, SETTINGS).append([rec("q0", 1.0)])
    good = path.read_text()
    path.write_text(good + json.dumps(rec("q0", 0.0).__dict__) + "\n")
    with pytest.raises(BaselineError, match=r"b\.jsonl:3: duplicate question id 'q0'"):
        BaselineCache(path, SETTINGS)
    path.write_text(good + '{"id": "q1"}\n')
    with pytest.raises(BaselineError, match=r"b\.jsonl:3: bad baseline record"):
        BaselineCache(path, SETTINGS)
    with pytest.raises(BaselineError, match="does not exist"):
        BaselineCache.load(tmp_path / "none.jsonl")


def test_precompute_writes_records(tmp_path) -> None:
    qs = items(5)
    client = FakeClient({"question 0?": "gold0", "question 3?": "The Gold3!"})
    retriever = FakeRetriever()
    cache = BaselineCache(tmp_path / "b.jsonl", SETTINGS)
    counts = precompute_baseline(qs, retriever, client, 2, cache, batch_size=2, progress=False)
    assert counts == {"total": 5, "skipped": 0, "computed": 5}
    assert client.answer_calls == 3 and len(retriever.queries) == 5
    r0 = cache.get("q0")
    assert (r0.genacc, r0.em, r0.answer, r0.context_ids) == (1.0, 1.0, "gold0", ["question 0?#0", "question 0?#1"])
    assert cache.get("q3").em == 1.0 and cache.get("q1").genacc == 0.0
    assert cache.accuracy() == pytest.approx(0.4)
    reread = BaselineCache(tmp_path / "b.jsonl", SETTINGS)
    assert reread.get("q3") == cache.get("q3") and len(reread) == 5


def test_precompute_resumes_after_crash_without_recomputing(tmp_path) -> None:
    qs = items(7)
    path = tmp_path / "b.jsonl"
    crashing = FakeClient({}, fail_on_call=3)
    with pytest.raises(RuntimeError, match="generator crashed"):
        precompute_baseline(qs, FakeRetriever(), crashing, 2, BaselineCache(path, SETTINGS), batch_size=2,
                            progress=False)
    assert crashing.answered == [f"question {i}?" for i in range(4)]  # batches 1-2 done, 3rd crashed
    cache = BaselineCache(path, SETTINGS)
    assert sorted(cache.ids()) == ["q0", "q1", "q2", "q3"]
    retriever, fresh = FakeRetriever(), FakeClient({})
    counts = precompute_baseline(qs, retriever, fresh, 2, cache, batch_size=2, progress=False)
    assert counts == {"total": 7, "skipped": 4, "computed": 3}
    assert fresh.answered == ["question 4?", "question 5?", "question 6?"] and fresh.answer_calls == 2
    assert retriever.queries == fresh.answered
    assert len(BaselineCache(path, SETTINGS)) == 7


def test_torn_last_line_is_dropped_and_recomputed(tmp_path) -> None:
    path = tmp_path / "b.jsonl"
    BaselineCache(path, SETTINGS).append([rec("q0", 0.0)])
    with path.open("a") as f:
        f.write('{"id": "q1", "quest')  # a write cut short by a crash
    with pytest.warns(UserWarning, match="incomplete last line"):
        cache = BaselineCache(path, SETTINGS)
    assert cache.ids() == ["q0"]
    precompute_baseline(items(2), FakeRetriever(), FakeClient({}), 2, cache, progress=False)
    assert BaselineCache(path, SETTINGS).ids() == ["q0", "q1"]


def test_precompute_checks_k_and_generator(tmp_path) -> None:
    cache = BaselineCache(tmp_path / "b.jsonl", SETTINGS)
    with pytest.raises(BaselineError, match="k=3"):
        precompute_baseline(items(1), FakeRetriever(), FakeClient({}), 3, cache, progress=False)
    other = BaselineCache(tmp_path / "c.jsonl", replace(SETTINGS, generator="gen-x"))
    with pytest.raises(BaselineError, match="gen-x"):
        precompute_baseline(items(1), FakeRetriever(), FakeClient({}), 2, other, progress=False)


def test_filter_drops_answered_and_yes_no(tmp_path) -> None:
    qs = items(3) + [QAItem("yn", "Is it?", ("No",))]
    cache = BaselineCache(tmp_path / "b.jsonl", SETTINGS)
    cache.append([rec("q0", 1.0), rec("q1", 0.0), rec("q2", 0.0)])
    kept, dropped = filter_unanswered(qs, cache)
    assert [it.id for it in kept] == ["q1", "q2"] and dropped == 2
    with pytest.raises(BaselineMissing, match="'q9'"):
        filter_unanswered([QAItem("q9", "?", ("x",))], cache)


def test_filter_keeps_a_seeded_share_of_rag_solved_questions(tmp_path) -> None:
    qs = items(10) + [QAItem("yn", "Is it?", ("No",))]
    cache = BaselineCache(tmp_path / "b.jsonl", SETTINGS)
    cache.append([rec(f"q{i}", 1.0 if i < 6 else 0.0) for i in range(10)])  # q0..q5 solved by naive RAG
    kept, dropped = filter_unanswered(qs, cache, keep_solved_fraction=0.5, seed=1)
    solved = [it.id for it in kept if int(it.id[1:]) < 6]
    assert len(solved) == 3 and [it.id for it in kept if it.id not in solved] == ["q6", "q7", "q8", "q9"]
    assert dropped == 11 - 7 and [it.id for it in kept] == sorted((it.id for it in kept), key=lambda x: int(x[1:]))
    assert filter_unanswered(qs, cache, keep_solved_fraction=0.5, seed=1)[0] == kept  # seeded
    assert len(filter_unanswered(qs, cache, keep_solved_fraction=1.0)[0]) == 10  # never yes/no
    with pytest.raises(ValueError, match="keep_solved_fraction"):
        filter_unanswered(qs, cache, keep_solved_fraction=1.5)


@pytest.fixture
def small_run(tmp_path):
    """A 4-passage corpus, 3 training questions and a built BM25 index, all under tmp_path."""
    from s3_ray.data.corpus import write_corpus
    from s3_ray.data.qa import write_qa
    from s3_ray.retrieval.index import build_index

    write_corpus(tmp_path / "corpus.jsonl", [
        Passage("d1", '"Ada Lovelace"\nAda Lovelace was born in London.'),
        Passage("d2", '"Charles Babbage"\nBabbage designed the analytical engine.'),
        Passage("d3", '"Oslo"\nOslo is the capital of Norway.'),
        Passage("d4", '"Rome"\nRome is the capital of Italy.'),
    ])
    write_qa(tmp_path / "train.jsonl", [
        QAItem("t1", "Where was Ada Lovelace born?", ("London",)),
        QAItem("t2", "What is the capital of Norway?", ("Oslo",)),
        QAItem("t3", "Is Rome in Italy?", ("yes",)),
    ])
    cfg = load_config(None, [f"run_dir={tmp_path}/run", f"data.corpus_path={tmp_path}/corpus.jsonl",
                             f"data.train_path={tmp_path}/train.jsonl", f"retrieval.index_dir={tmp_path}/index",
                             "rollout.init_k=2", "generator.model=tiny-random", "generator.max_new_tokens=4",
                             f"generator.cache_path={tmp_path}/gen.sqlite"])
    build_index(tmp_path / "corpus.jsonl", cfg.retrieval, progress=False)
    return cfg


def test_settings_from_config_track_index_and_budget(small_run) -> None:
    cfg = small_run
    s = baseline_settings(cfg)
    assert (s.generator, s.init_k, s.method, s.judge, s.backend) == ("tiny-random", 2, "naive_rag", False,
                                                                      "transformers")
    assert s.decoding == "max_new_tokens=4 max_context_tokens=768 temperature=0.0 fit=tokenizer"
    served = cfg.with_overrides({"generator.backend": "openai", "generator.model": "hosted-model-without-tokenizer"})
    assert baseline_settings(served).decoding.endswith("fit=chars/3")
    assert baseline_settings(cfg.with_overrides({"generator.max_context_tokens": 512})).decoding != s.decoding
    assert s.retriever.startswith("bm25 ") and "corpus-sha256:" in s.retriever
    cache = open_baseline(cfg, "train")
    assert cache.path == cfg.path("baseline", "train.jsonl")
    cache.append([rec("t1", 0.0)])
    with pytest.raises(BaselineError, match="init_k"):
        open_baseline(cfg.with_overrides({"rollout.init_k": 5}), "train")
    with pytest.raises(BaselineError, match="generator"):
        open_baseline(cfg.with_overrides({"generator.model": "smollm2-135m-instruct"}), "train")
    with pytest.raises(BaselineError, match="backend='transformers' but backend='openai'"):
        open_baseline(cfg.with_overrides({"generator.backend": "openai"}), "train")
    with pytest.raises(BaselineError, match="decoding=.*max_new_tokens=4 .* but decoding=.*max_new_tokens=9 "):
        open_baseline(cfg.with_overrides({"generator.max_new_tokens": 9}), "train")


def test_precompute_job_in_process_then_resume(small_run, tmp_path, capsys) -> None:
    import yaml

    from jobs.precompute import main

    cfg = small_run
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump()))
    argv = ["--config", str(cfg_file), "--split", "train", "--no-progress"]
    assert main(argv) == 0
    cache = open_baseline(cfg, "train")
    assert sorted(cache.ids()) == ["t1", "t2", "t3"]
    assert cache.get("t1").context_ids[0] == "d1" and len(cache.get("t1").context_ids) <= 2
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "3 questions, 3 computed, 0 already stored" in err
    assert "3 questions, 0 computed, 3 already stored" in err
    kept = sum(1 for qid in ("t1", "t2") if cache.get(qid).genacc == 0.0)  # t3 is yes/no: always dropped
    assert f"keeps {kept} of 3" in err
