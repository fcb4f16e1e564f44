"""Asynchronous training with rollout workers as Ray actors (local CPU Ray): learning under S = 2,
a worker killed mid-group, a trainer restarted from its checkpoint state."""

from __future__ import annotations

import statistics
import sys
from collections import Counter

import pytest
import torch

import fakes
from fakes import FakeRetriever, LowTokenScorer
from s3_ray.clients import RetrieverClient
from s3_ray.config import load_config
from s3_ray.models import load_causal_lm
from s3_ray.types import QAItem, RewardResult, Trajectory

pytestmark = [pytest.mark.ray]
ITEMS = [QAItem(f"q{i}", q, ("x",)) for i, q in enumerate(
    ["Who founded Holt Company?", "Where is Cedar Works?", "Which river flows through Alder Town?",
     "Who is the mayor of Birch Falls?", "Where is Dune Port?", "What did Elm Mill do?"])]


@pytest.fixture(autouse=True)
def _ship_test_modules_by_value():
    import ray.cloudpickle

    for mod in (sys.modules[__name__], fakes):
        ray.cloudpickle.register_pickle_by_value(mod)
    yield
    for mod in (sys.modules[__name__], fakes):
        ray.cloudpickle.unregister_pickle_by_value(mod)


def _trainer(S: int, turns: int = 1, items=ITEMS, logs=None):
    from s3_ray.rl.loop.async_trainer import AsyncSearcherTrainer
    from s3_ray.rl.ray_train.rollout_pool import RayRolloutPool

    torch.manual_seed(0)
    cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=8", "searcher.temperature=1.0",
                             "searcher.max_prompt_tokens=512", f"rollout.max_turns={turns}",
                             "train.questions_per_step=2", "train.group_size=4", "train.lr=3e-2", "train.kl_coef=0.0",
                             "train.micro_batch=8", f"train.async.max_staleness={S}", "train.async.rollout_workers=2",
                             "train.async.worker_cpus=0.5"])
    model, tok = load_causal_lm("tiny-random", num_threads=1, for_training=True)
    say = logs.append if logs is not None else print
    pool = RayRolloutPool(cfg, RetrieverClient.in_process(FakeRetriever()), LowTokenScorer(len(tok)), log=say)
    trainer = AsyncSearcherTrainer(cfg, model, None, tok, pool, list(items), wait_timeout=300, log=say)
    drawn: Counter[str] = Counter()
    consumed: Counter[str] = Counter()
    draw, take = trainer.buffer.draw, trainer.buffer.take

    def counting_draw(n, v, ex):
        qs = draw(n, v, ex)
        drawn.update(q.id for q in qs)
        return qs

    def counting_take():
        groups = take()
        if groups is not None:
            consumed.update(g.ticket.item.id for g in groups)
        return groups

    trainer.buffer.draw, trainer.buffer.take = counting_draw, counting_take
    return trainer, pool, drawn, consumed


def _held(buffer) -> Counter[str]:
    return Counter([q.id for q in buffer.queue] + [t.item.id for t in buffer.in_flight.values()]
                   + [g.ticket.item.id for g in buffer.ready])


def test_toy_reward_rises_under_staleness_two(ray_session):
    trainer, pool, drawn, consumed = _trainer(S=2)
    try:
        steps = [trainer.train_step() for _ in range(12)]
    finally:
        pool.close()
    rewards = [m["reward"] for m in steps]
    assert statistics.mean(rewards[-3:]) > statistics.mean(rewards[:3]) + 0.2, rewards
    assert all(m["async/staleness_max"] <= 2 for m in steps)
    assert consumed + _held(trainer.buffer) == drawn


def test_a_killed_worker_loses_no_question_and_doubles_none(ray_session):
    import ray

    logs: list[str] = []
    trainer, pool, drawn, consumed = _trainer(S=1, turns=2, logs=logs)
    try:
        trainer.train_step()
        assert pool.running, "groups should be in flight through the update"
        _, slot = next(iter(pool.running.values()))
        victim = pool.actors[slot]
        ray.kill(victim, no_restart=True)
        steps = [trainer.train_step() for _ in range(3)]
    finally:
        pool.close()
    assert trainer.lost_groups == 1 and any("queued again" in line for line in logs), logs
    assert sum(m["async/lost_groups"] for m in steps) == 1
    assert all(m["async/staleness_max"] <= 1 for m in steps)
    assert consumed + _held(trainer.buffer) == drawn  # the lost group's question ran again, once


def test_a_restarted_trainer_resumes_its_cursor_and_buffer(ray_session):
    import copy

    first, pool, drawn, consumed = _trainer(S=1)
    try:
        for _ in range(2):
            first.train_step()
        state = copy.deepcopy(first.state())
        weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    finally:
        pool.close()  # the trainer and its workers are gone
    in_flight = {qid for _, qid, _ in state["buffer"]["in_flight"]}
    second, pool2, drawn2, consumed2 = _trainer(S=1)
    try:
        second.model.load_state_dict(weights)
        second.load_state(state)
        second.steps_done = 2
        second.weights_changed()
        assert second.stream.state() == first.stream.state() and second.buffer.version == 2
        assert in_flight <= {q.id for q in second.buffer.queue}
        steps = [second.train_step() for _ in range(2)]
    finally:
        pool2.close()
    assert all(m["async/staleness_max"] <= 1 for m in steps)
    # every question the first run drew and did not train on, and every new one, is trained once or still held
    assert consumed + consumed2 + _held(second.buffer) == drawn + drawn2


class RecordingScorer:
    """A reward that varies inside each group (as test_train's ToyScorer) and appends, per scored
    group, a JSON line {qid, pid, t} to `path`: which question a rollout worker process scored when."""

    def __init__(self, path: str) -> None:
        self.path = path

    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        import json
        import os
        import time

        with open(self.path, "a") as f:
            f.write(json.dumps({"qid": trajs[0].item.id, "pid": os.getpid(), "t": time.time()}) + "\n")
        return [RewardResult(float(sum(t.response_ids) % 7) / 7.0, {"genacc": 0.0}) for t in trajs]


def test_run_training_asynchronously_crashes_and_resumes_from_its_checkpoint(ray_session, tmp_path):
    """The real entry (`run_training`: TorchTrainer, the worker's rollout actors, `fit`) with
    train.async.max_staleness=1: it trains, logs the staleness and importance weights, checkpoints,
    and after a worker crash resumes from the checkpoint files with the question cursor and the
    buffer: the groups ready at the checkpoint train without running again, the ones in flight run
    again, and no question trained before the crash runs again."""
    import json
    from pathlib import Path

    from s3_ray.rl.ray_train.launch import run_training

    overrides = {
        "run_dir": str(tmp_path / "run"), "searcher.model": "tiny-random", "searcher.max_new_tokens": 8,
        "searcher.max_prompt_tokens": 512, "searcher.num_threads": 1, "rollout.max_turns": 1,
        "train.steps": 3, "train.questions_per_step": 2, "train.group_size": 2, "train.lr": 1e-3,
        "train.checkpoint_every": 1, "wandb.enabled": False, "train.guard_malformed_rate": None,
        "train.async.max_staleness": 1, "train.async.rollout_workers": 2, "train.async.worker_cpus": 0.5,
    }
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    # more questions than the run can admit ((S + steps + 1) x B = 10), so none comes round twice
    items = [QAItem(f"p{i}", f"Where is Place {i}?", ("x",)) for i in range(32)]
    record = tmp_path / "scored.jsonl"
    result = run_training(cfg, items, RetrieverClient.in_process(FakeRetriever()), RecordingScorer(str(record)),
                          name="async", fail_at_step=1, max_failures=1)
    assert result.error is None
    run = Path(cfg.run_dir)
    rows = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # step 1, the crash after its checkpoint, steps 2-3 resumed
    marker = run / "train" / ".injected_failure"
    assert marker.exists()
    for r in rows:
        for key in ("async/staleness_0", "async/staleness_1", "async/staleness_mean", "async/staleness_max",
                    "async/wait_s", "async/lost_groups", "is/weight_mean", "is/weight_max", "is/truncated_share",
                    "reward", "loss", "time/update_s"):
            assert key in r, key
        assert r["async/staleness_max"] <= 1 and r["async/staleness_0"] + r["async/staleness_1"] == 2
    ckpt = Path(result.checkpoint.path)
    assert json.loads((ckpt / "meta.json").read_text())["step"] == 3

    def extra(step: int) -> dict:
        (folder,) = [p for p in (run / "ray" / "async").glob(f"checkpoint_*_step{step}") if p.is_dir()]
        return torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=True)["extra"]

    at1, at3 = extra(1), extra(3)
    assert at1["buffer"]["version"] == 1 and at3["buffer"]["version"] == 3
    held_ready = {g["ticket"][1] for g in at1["buffer"]["ready"]}
    held_again = {qid for _, qid, _ in at1["buffer"]["in_flight"]} | set(at1["buffer"]["queue"])
    assert all(1 - 1 <= g["ticket"][2] <= 1 for g in at1["buffer"]["ready"])  # usable at version 1 with S = 1
    assert held_ready | held_again, "the checkpoint held no group: the workers did not run through the update"

    scored = [json.loads(line) for line in record.read_text().splitlines()]
    crash = marker.stat().st_mtime
    first_seen: dict[int, float] = {}
    for s in scored:
        first_seen.setdefault(s["pid"], s["t"])
    after = [s["qid"] for s in scored if first_seen[s["pid"]] > crash]  # by the actors the restarted worker started
    before = {s["qid"] for s in scored if first_seen[s["pid"]] <= crash}
    assert after, "the restarted trainer rolled out nothing"
    assert held_again <= set(after), (held_again, after)       # in flight at the checkpoint: ran again
    assert not held_ready & set(after), (held_ready, after)   # ready at the checkpoint: trained from the file
    trained_before = before - held_ready - held_again
    assert len(trained_before) >= 2 and not trained_before & set(after)  # step 1's questions never ran again
    assert len(after) == len(set(after))  # and none ran twice after the restart
