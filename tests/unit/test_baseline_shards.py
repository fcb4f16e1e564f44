"""The baseline split over Ray tasks (`s3_ray.pipeline.baseline_shards`), driven by a stand-in `ray`:
finished shards are merged even when another fails, and the error names the failed shard."""

from __future__ import annotations

import sys

import pytest

from s3_ray.pipeline.baseline_shards import run_sharded
from s3_ray.reward import BaselineCache, BaselineRecord, baseline_settings, open_baseline
from s3_ray.reward.shards import existing_shards, shard_of
from tests.unit.test_eval_pairs import FakeRay
from tests.unit.test_reward import small_run  # noqa: F401 -- fixture


def writer(cfg, fail_on: str | None = None):
    """A shard task that records every question as answered, or fails on the shard holding `fail_on`."""

    def task(shard_file: str, items) -> int:
        if fail_on in {it.id for it in items}:
            raise RuntimeError("generator crashed")
        BaselineCache(shard_file, baseline_settings(cfg)).append(
            BaselineRecord(id=it.id, question=it.question, answer="a", genacc=0.0, em=0.0, context_ids=[])
            for it in items)
        return len(items)

    return task


def test_finished_shards_are_merged_when_one_fails(small_run, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    cfg = small_run
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    shards = 4
    assert shard_of("t1", shards) != shard_of("t2", shards) == shard_of("t3", shards)  # two shard tasks
    logs: list[str] = []
    with pytest.raises(RuntimeError, match=rf"(?s)1 of 2 shard tasks failed.*shard {shard_of('t1', shards)}: "
                                           "RuntimeError: generator crashed"):
        run_sharded(cfg, "train", shards, writer(cfg, fail_on="t1"), task_cpus=0.5, task_gpus=0.25, log=logs.append)
    assert fake.options == [{"num_cpus": 0.5, "max_retries": 1, "num_gpus": 0.25}]
    main = open_baseline(cfg, "train")
    assert sorted(main.ids()) == ["t2", "t3"] and existing_shards(main.path) == []  # merged, not left behind

    counts = run_sharded(cfg, "train", shards, writer(cfg), log=logs.append)  # the rerun does only the rest
    assert counts == {"total": 3, "skipped": 2, "computed": 1, "recovered": 0, "shards": 1}
    assert open_baseline(cfg, "train").ids() == ["t2", "t3", "t1"]
    assert fake.options[-1] == {"num_cpus": 1.0, "max_retries": 1}  # no GPU asked for when none is wanted
    assert logs[-1].endswith("3 questions, 1 computed in 1 shards, 0 recovered from shard files, 2 already stored")
