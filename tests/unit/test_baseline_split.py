"""The config-driven baseline steps: `precompute_split` fills (or resumes) a split's file at the
path and with the settings the config implies, and `summarize_split` reports it."""

from __future__ import annotations

import pytest

from s3_ray.reward import BaselineMissing, baseline_path, open_baseline, precompute_split, summarize_split
from tests.unit.test_reward import FakeClient, FakeRetriever, rec, small_run  # noqa: F401 -- fixture

ANSWERS = {"Where was Ada Lovelace born?": "London", "What is the capital of Norway?": "Bergen"}


def test_precompute_split_fills_the_configs_file_then_resumes(small_run) -> None:  # noqa: F811
    cfg = small_run.with_overrides({"generator.model": "fake-gen"})  # FakeClient's model id
    logs: list[str] = []
    retriever = FakeRetriever()
    out = precompute_split(cfg, "train", retriever, FakeClient(ANSWERS), progress=False, log=logs.append)
    assert out == {"split": "train", "path": str(baseline_path(cfg, "train")), "total": 3, "computed": 3,
                   "skipped": 0, "genacc": pytest.approx(1 / 3), "em": pytest.approx(1 / 3), "kept": 1,
                   "dropped": 2}  # t1 answered by naive RAG, t3 is yes/no: only t2 is kept
    assert len(retriever.queries) == 3 and open_baseline(cfg, "train").get("t1").answer == "London"
    assert "3 questions, 3 computed, 0 already stored" in logs[0]
    assert logs[-1] == "s3 training filter keeps 1 of 3 (2 answered by naive RAG or yes/no)"

    again = precompute_split(cfg, "train", retriever, FakeClient(ANSWERS), progress=False, log=logs.append)
    assert (again["computed"], again["skipped"], len(retriever.queries)) == (0, 3, 3)
    assert summarize_split(cfg, "train", log=lambda _: None) == {k: out[k] for k in ("genacc", "em", "kept",
                                                                                       "dropped")}


def test_summary_needs_every_question_of_the_split(small_run) -> None:  # noqa: F811
    open_baseline(small_run, "train").append([rec("t1", 1.0)])
    with pytest.raises(BaselineMissing, match="no baseline for question id 't2'"):
        summarize_split(small_run, "train", log=lambda _: None)
