"""Dynamic sampling and the question curriculum, with a scripted policy and scripted rewards:
only groups whose rewards differ reach the update, rounds refill up to their cap, workers agree on
the rounds and pad their batches (2 gloo ranks), and the curriculum survives a checkpoint."""

from __future__ import annotations

import pytest
import torch

from fakes import FakeRetriever
from isolated import run_isolated
from s3_ray.agent.policy import ScriptedPolicy
from s3_ray.agent.rollout import run_rollout
from s3_ray.clients import RetrieverClient
from s3_ray.config import RolloutConfig, SearcherConfig, TrainConfig, load_config
from s3_ray.models import load_causal_lm
from s3_ray.rl.loop.curriculum import Curriculum
from s3_ray.rl.loop.sampling import GroupSampler, has_signal, split_groups
from s3_ray.rl.loop.trainer import QuestionStream, SearcherTrainer, attach_rewards
from s3_ray.types import QAItem, RewardResult

ITEMS = [QAItem(f"q{i}", f"Who founded company {i}?", ("x",)) for i in range(8)]
SIGNAL = {"q1", "q4", "q6"}  # the only questions whose rollouts score differently


class ScriptedScorer:
    """Questions in `signal` alternate 1, 0, 1, ...; every other question scores 0 for all rollouts."""

    def __init__(self, signal: set[str]) -> None:
        self.signal = signal
        self.calls = 0

    def score(self, trajs):
        self.calls += 1
        return [RewardResult(float(t.item.id in self.signal and i % 2 == 0), {"genacc": 0.0})
                for i, t in enumerate(trajs)]


@pytest.fixture(scope="module")
def tok():
    return load_causal_lm("tiny-random")[1]


def _sampler(tok, stream, scorer, **train):
    cfg = TrainConfig(questions_per_step=2, group_size=2, **train)
    policy = ScriptedPolicy(tok, lambda text: "<search_complete>True</search_complete>")

    def run(batch):
        trajs = run_rollout(batch, policy, tok, FakeRetriever(), RolloutConfig(max_turns=1),
                            SearcherConfig(max_prompt_tokens=512))
        attach_rewards(trajs, scorer.score(trajs))
        return trajs, 0.0, 0.0

    return GroupSampler(cfg, lambda n, step, exclude: stream.take(n), run)


def test_dynamic_sampling_keeps_only_groups_whose_rewards_differ(tok) -> None:
    stream = QuestionStream(ITEMS, seed=0)
    order = [q.id for q in QuestionStream(ITEMS, seed=0).take(8)]
    sample = _sampler(tok, stream, ScriptedScorer(SIGNAL), min_signal_groups=2, max_sample_rounds=4).sample(0)
    assert all(has_signal(g) for g in sample.kept) and sample.kept
    assert {g[0].item.id for g in sample.kept} <= SIGNAL
    assert len(sample.kept) >= 2
    # it stopped at the first round that reached 2 groups with signal, having sampled the stream in order
    drawn = [g[0].item.id for g in sample.groups]
    assert drawn == order[: 2 * sample.rounds]
    reached = [sum(q in SIGNAL for q in order[: 2 * r]) for r in range(1, 5)]
    assert sample.rounds == next(r for r, n in enumerate(reached, 1) if n >= 2)
    m = sample.metrics()
    assert m["sample/groups"] == 2 * sample.rounds and m["sample/episodes"] == 4 * sample.rounds
    assert m["sample/signal_groups"] == len(sample.kept)


def test_dynamic_sampling_refills_only_up_to_its_cap(tok) -> None:
    scorer = ScriptedScorer(set())  # nothing ever has signal
    sample = _sampler(tok, QuestionStream(ITEMS, seed=0), scorer, min_signal_groups=1, max_sample_rounds=3).sample(0)
    assert sample.rounds == 3 and scorer.calls == 3 and sample.kept == []
    assert len(sample.groups) == 6


def test_without_dynamic_sampling_one_round_keeps_every_group(tok) -> None:
    sample = _sampler(tok, QuestionStream(ITEMS, seed=0), ScriptedScorer(SIGNAL)).sample(0)
    assert sample.rounds == 1 and sample.kept == sample.groups and len(sample.groups) == 2


def test_split_groups_and_config_checks() -> None:
    a, b = QAItem("a", "A?", ("x",)), QAItem("b", "B?", ("x",))
    from s3_ray.types import Trajectory

    trajs = [Trajectory(q, [1]) for q in (a, a, b, b, b)]
    assert [len(g) for g in split_groups(trajs)] == [2, 3]
    with pytest.raises(Exception, match="min_signal_groups=2 needs train.group_size >= 2"):
        load_config(None, ["train.min_signal_groups=2", "train.group_size=1"])


def _trainer(tok_model, signal, **over):
    model, tok = tok_model
    args = {"searcher.model": "tiny-random", "searcher.max_new_tokens": 6, "searcher.max_prompt_tokens": 512,
            "searcher.num_threads": 1, "rollout.max_turns": 1, "train.questions_per_step": 2,
            "train.group_size": 2, "train.kl_coef": 0.0, "train.lr": 1e-3, **over}
    cfg = load_config(None, [f"{k}={v}" for k, v in args.items()])
    return SearcherTrainer(cfg, model, None, tok, RetrieverClient.in_process(FakeRetriever()),
                           ScriptedScorer(signal), ITEMS)


def test_the_update_sees_only_the_kept_groups(tok) -> None:
    import copy

    model, tk = load_causal_lm("tiny-random", for_training=True)
    trainer = _trainer((copy.deepcopy(model), tk), SIGNAL, **{"train.min_signal_groups": 1})
    seen, rewards = [], []
    real = trainer.updater.step
    trainer.updater.step = lambda trajs, filler=None: (seen.append([t.item.id for t in trajs]),
                                                       rewards.append([t.reward for t in trajs]), real(trajs, filler))[2]
    metrics = trainer.train_step()
    assert seen and set(seen[0]) <= SIGNAL and len(seen[0]) % 2 == 0
    assert metrics["sample/signal_groups"] >= 1 and metrics["update_skipped"] == 0.0
    assert metrics["time/per_signal_group_s"] > 0
    # the reward of what was learned: the groups the update saw (equal sizes: their trajectories' mean)
    assert metrics["reward_learned"] == pytest.approx(sum(rewards[0]) / len(rewards[0]))

    flat = _trainer((copy.deepcopy(model), tk), set(), **{"train.min_signal_groups": 1, "train.max_sample_rounds": 2})
    flat.updater.step = lambda *a, **k: pytest.fail("a step with no signal must not run the update")
    metrics = flat.train_step()
    assert metrics["update_skipped"] == 1.0 and metrics["sample/rounds"] == 2.0 and "reward_learned" not in metrics


def test_curriculum_state_survives_checkpoint_and_resume(tok) -> None:
    def run(steps: int, resume_from=None):
        stream = QuestionStream(ITEMS, seed=3)
        cur = Curriculum(stream, window=4, patience=1, rest=2, focus=0.5)
        start = 0
        if resume_from is not None:
            cur.load_state(resume_from[1])
            start = resume_from[0]
        drawn = []
        for step in range(start, steps):
            qs = cur.take(2, step)
            drawn.append([q.id for q in qs])
            for q in qs:
                cur.observe(q.id, [1, 0] if q.id in SIGNAL else [0, 0], flat=q.id not in SIGNAL, step=step)
        return drawn, cur

    full, _ = run(6)
    head, cur = run(3)
    import json

    saved = json.loads(json.dumps(cur.state()))  # as a checkpoint stores it
    tail, _ = run(6, resume_from=(3, saved))
    assert head + tail == full
    assert any(q in SIGNAL for step in full[1:] for q in step)


def _rank_main(rank: int, world: int, port: int) -> None:
    """Two DDP ranks with dynamic sampling: only rank 0's questions ever have signal, so rank 1 keeps
    no group and pads its batch; both must agree on the rounds and end with the same weights."""
    import copy
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        torch.manual_seed(0)
        model, tok = load_causal_lm("tiny-random", for_training=True)
        ddp = DistributedDataParallel(copy.deepcopy(model))
        cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=6",
                                 "searcher.max_prompt_tokens=512", "searcher.num_threads=1", "rollout.max_turns=1",
                                 "train.num_workers=2", "train.questions_per_step=2", "train.group_size=2",
                                 "train.kl_coef=0.0", "train.lr=1e-2", "train.min_signal_groups=2",
                                 "train.max_sample_rounds=3", "train.warmup_batch=2"])
        mine = ITEMS[rank::world]
        signal = {q.id for q in mine} if rank == 0 else set()
        trainer = SearcherTrainer(cfg, ddp, None, tok, RetrieverClient.in_process(FakeRetriever()),
                                  ScriptedScorer(signal), mine, rank=rank, world=world)
        metrics = trainer.train_step()
        checksum = torch.tensor([sum(p.detach().double().sum().item() for p in ddp.module.parameters())],
                                dtype=torch.float64)
        sums = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(sums, checksum)
        rounds = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(rounds, torch.tensor([metrics["sample/rounds"]]))
    finally:
        dist.destroy_process_group()
    assert rounds[0].item() == rounds[1].item() == 2.0, rounds  # 1 signal group per round on rank 0
    assert metrics["sample/signal_groups"] == 2.0 and metrics["update_skipped"] == 0.0
    assert sums[0].item() == sums[1].item(), sums
    before = sum(p.detach().double().sum().item() for p in model.parameters())
    assert sums[0].item() != before  # the update ran (rank 1 only padded)
    print(f"rank {rank}: rounds {metrics['sample/rounds']}, signal groups {metrics['sample/signal_groups']}")
    print("SAMPLING-OK")


def _spawn() -> None:
    import socket

    import torch.multiprocessing as mp

    load_causal_lm("tiny-random")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port), nprocs=2)


def test_ranks_agree_on_rounds_and_pad_an_empty_batch() -> None:
    out = run_isolated(__file__, "_spawn()", "SAMPLING-OK", timeout=300)
    assert out.count("SAMPLING-OK") == 2
