"""(method, data set) pairs: factories built where the pair runs, any `map_fn`, per-pair files,
and the job's Ray dispatcher (driven here by a stand-in `ray` module, no cluster)."""

from __future__ import annotations

import functools
import pickle
import sys
import types
from pathlib import Path

import pytest

from s3_ray.config import load_config
from s3_ray.eval.ray_pairs import ray_map
from s3_ray.eval.runner import MethodRef, PairJob, run_datasets, run_pair, token_counter
from s3_ray.eval.suite import method_refs
from s3_ray.types import QAItem
from tests.fakes import FakeRetriever
from tests.unit.test_eval_report import EchoGenerator, FixedMethod

DATA = {"d1": [QAItem("q1", "Where was Ada born?", ("Brindle",))],
        "d2": [QAItem("q2", "Who founded Velmora?", ("Orla",)), QAItem("q3", "When?", ("1841",))]}


def _fixed(name: str = "fixed") -> FixedMethod:
    m = FixedMethod()
    m.name = name
    return m


def test_refs_with_a_custom_map(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def reversed_map(fn, jobs):  # runs the pairs in another order, returns them in job order
        calls.extend((j.dataset, j.method.name) for j in jobs)
        return [fn(j) for j in jobs[::-1]][::-1]

    refs = [MethodRef("a", functools.partial(_fixed, "a")), MethodRef("b", functools.partial(_fixed, "b"))]
    res = run_datasets(refs, DATA, EchoGenerator(), tmp_path, log=lambda s: None, map_fn=reversed_map)
    assert calls == [("d1", "a"), ("d1", "b"), ("d2", "a"), ("d2", "b")]
    assert res["d2"]["b"]["genacc"] == 0.5 and res["d1"]["a"]["n"] == 1
    assert sorted(p.name for p in (tmp_path / "d2").iterdir()) == ["a.jsonl", "b.jsonl"]
    assert all(key in res["d2"]["a"] for key in ("seconds", "lm_calls", "generator_calls"))
    pickle.dumps(refs)  # factories travel to workers


def test_duplicate_and_mislabelled_methods_fail(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appears twice"):
        run_datasets([_fixed(), _fixed()], DATA, EchoGenerator(), tmp_path, log=lambda s: None)
    job = PairJob("d1", MethodRef("label", functools.partial(_fixed, "other")), DATA["d1"], str(tmp_path),
                  EchoGenerator(), log=lambda s: None)
    with pytest.raises(ValueError, match="built a method named 'other'"):
        run_pair(job)


def test_token_counter_pickles_without_its_tokenizer() -> None:
    count = token_counter("tiny-random")
    n = count("alder town lies on the river")
    blob = pickle.dumps(count)
    assert len(blob) < 500 and pickle.loads(blob)("alder town lies on the river") == n > 0


class _Ref:
    """A finished task: hashable by identity, like an ObjectRef."""

    def __init__(self, value=None, error=None) -> None:
        self.value, self.error = value, error


class FakeRay(types.ModuleType):
    """Just enough of `ray` for `ray_map`: tasks run at `.remote()`, failures surface at `get`."""

    def __init__(self) -> None:
        super().__init__("ray")
        self.options: list[dict] = []

    def remote(self, **options):
        self.options.append(options)

        def wrap(fn):
            def submit(job):
                try:
                    return _Ref(value=fn(job))
                except Exception as err:  # noqa: BLE001
                    return _Ref(error=err)
            return types.SimpleNamespace(remote=submit)
        return wrap

    def wait(self, pending, num_returns, timeout):
        assert timeout is not None
        return pending[:num_returns], pending[num_returns:]

    def get(self, ref, timeout):
        assert timeout is not None
        if ref.error is not None:
            raise ref.error
        return ref.value


def test_ray_map_collects_every_failure_after_running_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)

    def broken():
        raise RuntimeError("model missing")

    refs = [MethodRef("broken", broken), MethodRef("fixed", _fixed)]
    logs: list[str] = []
    with pytest.raises(RuntimeError, match=r"(?s)2 of 4 \(method, data set\) pairs failed.*d1/broken: RuntimeError: "
                                           r"model missing.*d2/broken"):
        run_datasets(refs, DATA, EchoGenerator(), tmp_path, log=lambda s: None,
                     map_fn=ray_map(0.5, log=logs.append))
    assert fake.options == [{"num_cpus": 0.5, "max_retries": 1}]
    assert (tmp_path / "d1" / "fixed.jsonl").is_file() and (tmp_path / "d2" / "fixed.jsonl").is_file()
    res = run_datasets([MethodRef("fixed", _fixed)], DATA, EchoGenerator(), tmp_path, log=lambda s: None,
                       map_fn=ray_map(0.25))
    assert res["d2"]["fixed"]["genacc"] == 0.5
    with pytest.raises(ValueError, match="task-cpus"):
        ray_map(0)


def test_job_builds_picklable_refs_without_loading_models(tmp_path: Path) -> None:
    cfg = load_config(None, [f"run_dir={tmp_path}", "eval.methods=[naive_rag, s3, search_o1]",
                             "eval.checkpoints={trained: /nowhere/ckpt}"])
    refs = method_refs(cfg, FakeRetriever(), {"extra": "/nowhere/other"})
    assert [r.name for r in refs] == ["naive_rag", "s3_untrained", "search_o1", "trained", "extra"]
    assert pickle.loads(pickle.dumps(refs))[0].build().name == "naive_rag"


def test_finished_pair_is_summarised_without_building(tmp_path: Path) -> None:
    built: list[str] = []

    def build() -> FixedMethod:
        built.append("x")
        return _fixed()

    first = run_datasets([MethodRef("fixed", build)], DATA, EchoGenerator(), tmp_path, log=lambda s: None)
    again = run_datasets([MethodRef("fixed", build)], DATA, EchoGenerator(), tmp_path, log=lambda s: None)
    assert built == ["x", "x"] and again == first  # built once per data set, then only read
