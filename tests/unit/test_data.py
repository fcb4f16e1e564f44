"""Corpus/QA readers, the embedded data set and the world generator's retrieval property."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3_ray.config import DataConfig
from s3_ray.data import DataError, embedded_dir, load_split, read_corpus, read_qa, resolve_paths
from s3_ray.data.jsonl import write_jsonl
from s3_ray.data.world import build_world
from s3_ray.data.world_qa import make_splits
from s3_ray.retrieval.bm25 import BM25Retriever


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_corpus_both_layouts(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.jsonl", [
        json.dumps({"id": 1, "contents": '"A"\nalpha'}),
        "",
        json.dumps({"id": "x", "title": "Beta", "text": "second passage"}),
    ])
    ps = read_corpus(p)
    assert [x.id for x in ps] == ["1", "x"]
    assert ps[1].contents == '"Beta"\nsecond passage'
    assert ps[1].title == "Beta" and ps[1].text == "second passage"


@pytest.mark.parametrize("bad, problem", [
    ('{"id": "a", "contents": "ok"}\n{"id": "b", "contents": ""}', "c.jsonl:2: field 'contents' is empty"),
    ('{"id": "a", "contents": "ok"}\n{"id": "a", "contents": "x"}', "c.jsonl:2: duplicate id 'a' (first seen on line 1)"),
    ('{"id": "a", "contents": "ok"}\n\n{not json', "c.jsonl:3: invalid JSON"),
    ('{"id": 1.5, "contents": "ok"}', "c.jsonl:1: field 'id' must be a string or an integer, got float"),
    ('{"contents": "ok"}', "c.jsonl:1: missing field 'id'"),
    ('{"id": "a", "body": "ok"}', "c.jsonl:1: missing field 'contents'"),
    ('[1, 2]', "c.jsonl:1: expected a JSON object, got list"),
])
def test_read_corpus_names_file_and_line(tmp_path: Path, bad: str, problem: str) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(bad + "\n")
    with pytest.raises(DataError) as err:
        read_corpus(p)
    assert str(err.value).startswith(str(p.parent / problem))


def test_read_qa_strict(tmp_path: Path) -> None:
    good = _write(tmp_path / "q.jsonl", [
        json.dumps({"id": 7, "question": "Who?", "golden_answers": ["Ann", "A."], "meta": {"hops": 2}}),
    ])
    (item,) = read_qa(good)
    assert item.id == "7" and item.golden_answers == ("Ann", "A.") and item.meta == {"hops": 2}
    cases = {
        '{"id": 1, "question": "Q", "answer": "x", "golden_answers": ["x"]}': "unknown field(s) ['answer']",
        '{"id": 1, "question": "Q", "golden_answers": []}': "'golden_answers' must be a non-empty list",
        '{"id": 1, "question": "Q", "golden_answers": ["x", 3]}': "golden_answers[1] must be a non-empty string",
        '{"id": 1, "question": "", "golden_answers": ["x"]}': "field 'question' is empty",
        '{"id": 1, "question": "Q", "golden_answers": ["x"], "meta": []}': "field 'meta' must be an object",
    }
    for line, problem in cases.items():
        p = _write(tmp_path / "bad.jsonl", [json.dumps({"id": 0, "question": "ok", "golden_answers": ["y"]}), line])
        with pytest.raises(DataError) as err:
            read_qa(p)
        assert str(err.value).startswith(f"{p}:2: ") and problem in str(err.value)


def test_write_jsonl_is_atomic(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(p, rows())
    assert p.read_text() == '{"a": 1}\n'
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]


def test_embedded_paths_and_limits(tmp_path: Path) -> None:
    paths = resolve_paths(DataConfig())
    assert paths.corpus == embedded_dir() / "corpus.jsonl" and paths.test.is_file()
    assert resolve_paths(DataConfig(train_path=str(tmp_path / "t.jsonl"))).train == tmp_path / "t.jsonl"
    full = load_split(DataConfig(), "train")
    assert len(load_split(DataConfig(train_limit=5), "train")) == 5
    assert load_split(DataConfig(train_limit=5), "train") == full[:5]
    assert len(load_split(DataConfig(train_limit=5), "dev")) == len(load_split(DataConfig(), "dev"))
    with pytest.raises(ValueError, match="unknown split"):
        load_split(DataConfig(), "validation")


def test_embedded_files_match_generator() -> None:
    """The shipped files are exactly what the seeded generator writes (so they can be regenerated)."""
    manifest = json.loads((embedded_dir() / "manifest.json").read_text())
    world = build_world(manifest["seed"])
    assert [p.to_dict() for p in world.passages] == [p.to_dict() for p in read_corpus(embedded_dir() / "corpus.jsonl")]
    splits = make_splits(world)
    for name, items in splits.items():
        shipped = read_qa(embedded_dir() / f"{name}.jsonl")
        assert [q.to_dict() for q in shipped] == [q.to_dict() for q in items]
    assert (embedded_dir() / "corpus.jsonl").stat().st_size < 3_000_000


def test_world_is_deterministic_and_seed_dependent() -> None:
    a, b, c = build_world(3), build_world(3), build_world(4)
    assert a.passages == b.passages
    assert a.passages != c.passages
    assert make_splits(a)["test"] == make_splits(b)["test"]


def test_embedded_question_set_shape() -> None:
    corpus = {p.id: p for p in read_corpus(embedded_dir() / "corpus.jsonl")}
    assert 1500 <= len(corpus) <= 3000
    keys: dict[str, set] = {}
    for split, size in [("train", 400), ("dev", 100), ("test", 200)]:
        items = read_qa(embedded_dir() / f"{split}.jsonl")
        assert len(items) == size
        bridge = [q for q in items if q.meta["type"] == "bridge"]
        assert 0.55 <= len(bridge) / size <= 0.65
        for q in items:
            assert all(s in corpus for s in q.meta["support"])
            answer_passage = corpus[q.meta["support"][-1]].contents.lower()
            assert q.golden_answers[0].lower() in answer_passage
            if q.meta["type"] == "bridge":
                hop1 = corpus[q.meta["support"][0]].contents.lower()
                assert not any(a.lower() in hop1 for a in q.golden_answers), q
            # the (entity, relation) pair: support[0] names the entity
            keys.setdefault(split, set()).add((q.meta["support"][0], q.meta["relation"]))
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["dev"] and not keys["dev"] & keys["test"]
    # lead passages are short (one fact per sentence): a whole prompt of them stays cheap on a CPU
    world = build_world(json.loads((embedded_dir() / "manifest.json").read_text())["seed"])
    words = [len(corpus[pid].text.split()) for pid in world.lead.values()]
    assert min(words) >= 8 and max(words) <= 40


def test_bridge_answers_need_a_second_search() -> None:
    """Naive top-3 BM25 on the question finds single-hop support but rarely the bridge's second hop."""
    retriever = BM25Retriever.build(read_corpus(embedded_dir() / "corpus.jsonl"))
    test = read_qa(embedded_dir() / "test.jsonl")
    hits = retriever.search([q.question for q in test], 3)
    recall: dict[str, list[bool]] = {"single": [], "bridge": []}
    for q, h in zip(test, hits):
        recall[q.meta["type"]].append(q.meta["support"][-1] in {x.passage.id for x in h})
    single = sum(recall["single"]) / len(recall["single"])
    bridge = sum(recall["bridge"]) / len(recall["bridge"])
    print(f"naive top-3 recall of the answer passage: single {single:.2f}, bridge {bridge:.2f}")
    assert single > 0.8
    assert bridge < 0.4
