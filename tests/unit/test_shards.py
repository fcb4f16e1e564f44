"""Sharded baseline precompute: every question once, crash recovery, settings checks."""

from __future__ import annotations

import dataclasses

import pytest

from s3_ray.reward import BaselineCache, BaselineError, precompute_baseline
from s3_ray.reward.shards import (
    existing_shards,
    merge_shards,
    plan_shards,
    precompute_sharded,
    shard_of,
    shard_path,
)
from tests.unit.test_reward import SETTINGS, FakeClient, FakeRetriever, items


def fill(client: FakeClient, fail_shard: int | None = None):
    """A `run` for precompute_sharded: each shard answered in-process (optionally one crashes mid-way)."""

    def run(jobs):
        for index, path, qs in jobs:
            gen = FakeClient({}, fail_on_call=2) if index == fail_shard else client
            try:
                precompute_baseline(qs, FakeRetriever(), gen, 2, BaselineCache(path, SETTINGS), batch_size=2,
                                    progress=False)
            finally:
                if gen is not client:
                    client.answered.extend(gen.answered)

    return run


def test_every_question_is_answered_once_and_shard_files_are_merged(tmp_path) -> None:
    qs = items(17)
    main = BaselineCache(tmp_path / "train.jsonl", SETTINGS)
    client = FakeClient({"question 2?": "gold2"})
    counts = precompute_sharded(qs, main, 3, fill(client))
    assert counts == {"total": 17, "skipped": 0, "computed": 17, "recovered": 0, "shards": 3}
    assert sorted(client.answered) == sorted(q.question for q in qs)
    assert existing_shards(main.path) == []
    reread = BaselineCache(main.path, SETTINGS)
    assert reread.ids() == [q.id for q in qs]  # merged in question order
    assert reread.get("q2").genacc == 1.0 and reread.get("q3").genacc == 0.0
    again = FakeClient({})
    assert precompute_sharded(qs, reread, 3, fill(again))["computed"] == 0 and again.answered == []


def test_crashed_shard_keeps_its_finished_batches_and_a_rerun_computes_only_the_rest(tmp_path) -> None:
    qs = items(24)
    main = BaselineCache(tmp_path / "train.jsonl", SETTINGS)
    first = FakeClient({})
    with pytest.raises(RuntimeError, match="generator crashed"):
        precompute_sharded(qs, main, 2, fill(first, fail_shard=1))
    assert len(existing_shards(main.path)) == 2  # not merged: the run died before the merge
    done = set(first.answered)
    main = BaselineCache(main.path, SETTINGS)
    second = FakeClient({})
    counts = precompute_sharded(qs, main, 4, fill(second))  # another shard count is fine
    assert counts["recovered"] == len(done) and counts["computed"] == 24 - len(done)
    assert sorted(done | set(second.answered)) == sorted(q.question for q in qs)
    assert not done & set(second.answered)
    assert len(BaselineCache(main.path, SETTINGS)) == 24 and existing_shards(main.path) == []


def test_merge_skips_records_the_main_file_already_has(tmp_path) -> None:
    """A crash between appending a shard to the main file and deleting it must not duplicate ids."""
    qs = items(6)
    main = BaselineCache(tmp_path / "train.jsonl", SETTINGS)
    precompute_baseline(qs[:4], FakeRetriever(), FakeClient({}), 2, main, progress=False)
    shard = BaselineCache(shard_path(main.path, 0, 1), SETTINGS)
    precompute_baseline(qs[2:], FakeRetriever(), FakeClient({}), 2, shard, progress=False)
    assert merge_shards(main, [q.id for q in qs]) == 2
    assert BaselineCache(main.path, SETTINGS).ids() == [q.id for q in qs]


def test_shard_made_with_other_settings_is_refused_and_kept(tmp_path) -> None:
    main = BaselineCache(tmp_path / "train.jsonl", SETTINGS)
    other = dataclasses.replace(SETTINGS, init_k=5)
    stray = shard_path(main.path, 1, 2)
    BaselineCache(stray, other).append([])
    with pytest.raises(BaselineError, match="init_k"):
        merge_shards(main)
    assert stray.exists()


def test_plan_is_stable_and_covers_only_missing_questions(tmp_path) -> None:
    qs = items(40)
    main = BaselineCache(tmp_path / "train.jsonl", SETTINGS)
    precompute_baseline(qs[:10], FakeRetriever(), FakeClient({}), 2, main, progress=False)
    plan = plan_shards(qs, main, 4)
    assert sorted(q.id for s in plan for q in s) == sorted(q.id for q in qs[10:])
    assert all(shard_of(q.id, 4) == i for i, s in enumerate(plan) for q in s)
    assert sum(1 for s in plan if s) >= 2  # the hash spreads ids
    with pytest.raises(ValueError, match="duplicate"):
        plan_shards(qs + qs[:1], main, 2)
    with pytest.raises(ValueError, match="shards must be >= 1"):
        shard_of("q", 0)
