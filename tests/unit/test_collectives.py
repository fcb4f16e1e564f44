"""Every collective of a training step goes through `s3_ray.rl.model.collectives`, which puts its tensor
on the device the process group's backend reduces on (NCCL cannot reduce CPU tensors).

No GPU is needed: the backend -> device rule is checked with the backend and device faked, no
module calls `torch.distributed` collectives directly (read from the source), and a real 2-rank
gloo run of whole training steps records every Python-level collective call: each one must come
from `collectives.py` with its tensor on `group_device()`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from isolated import run_isolated

SRC = Path(__file__).resolve().parents[2] / "s3_ray"
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
               "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter",
               "all_to_all", "barrier"}


@pytest.mark.parametrize("backend, device", [("gloo", "cpu"), ("nccl", "cuda:3"), ("cpu:gloo,cuda:nccl", "cuda:3")])
def test_group_device_follows_the_backend(monkeypatch, backend, device) -> None:
    import torch.distributed as dist

    from s3_ray.rl.model import collectives

    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert collectives.group_device() == torch.device(device)


def test_no_module_calls_torch_distributed_collectives_directly() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "collectives.py" and path.parent.name == "model" and path.parent.parent.name == "rl":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
                base = node.func.value
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                if name in ("dist", "distributed"):
                    offenders.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {name}.{node.func.attr}")
    assert not offenders, "collectives outside s3_ray/rl/model/collectives.py: " + ", ".join(offenders)


def _rank_main(rank: int, world: int, port: int) -> None:
    """Whole training steps on a DDP policy (GRPO with a flat batch, PPO with an adaptive KL and the
    value head, the guard's stop agreement), every torch.distributed collective recorded."""
    import inspect
    from datetime import timedelta

    import torch.distributed as dist

    from fakes import FakeRetriever
    from s3_ray.clients import RetrieverClient
    from s3_ray.config import load_config
    from s3_ray.rl.model import collectives
    from s3_ray.rl.loop.fit import FitHooks, fit
    from s3_ray.rl.model.policy import SearcherPolicy
    from s3_ray.rl.loop.trainer import SearcherTrainer
    from s3_ray.types import QAItem, RewardResult

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    calls: list[tuple[str, str, str]] = []

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            caller = inspect.stack()[1].filename
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls.append((name, caller, str(tensor.device) if tensor is not None else "-"))
            return fn(*args, **kwargs)
        return wrapper

    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, recording(name, getattr(dist, name)))

    class Scorer:
        def __init__(self, flat: bool) -> None:
            self.flat = flat

        def score(self, trajs):
            return [RewardResult(0.0 if self.flat else float(i % 2)) for i in range(len(trajs))]

    items = [QAItem(f"q{i}", f"Who founded company {i}?", ("x",)) for i in range(4)]
    try:
        for algo, flat, kl in (("grpo", True, "train.kl_coef=0.0"), ("ppo", False, "train.kl_target=0.01")):
            cfg = load_config(None, ["searcher.model=tiny-random", "searcher.max_new_tokens=6",
                                     "searcher.max_prompt_tokens=512", "searcher.num_threads=1", "rollout.max_turns=1",
                                     f"train.algorithm={algo}", f"train.num_workers={world}",
                                     "train.questions_per_step=2", "train.group_size=2", "train.steps=2",
                                     "train.warmup_batch=2", kl])
            policy = SearcherPolicy.load(cfg, world=world, rank=rank)
            trainer = SearcherTrainer(cfg, policy.model, policy.ref, policy.tokenizer,
                                      RetrieverClient.in_process(FakeRetriever()), Scorer(flat), items[rank::world],
                                      rank=rank, world=world)
            fit(policy, trainer, FitHooks(report=lambda m, c: None, checkpoints=False), log=lambda msg: None)
        device = str(collectives.group_device())
    finally:
        dist.destroy_process_group()
    ours = [c for c in calls if "/s3_ray/" in c[1]]
    assert ours, "no collective was recorded"
    wrong = [c for c in ours if not c[1].endswith("s3_ray/rl/model/collectives.py") or c[2] not in (device, "-")]
    assert not wrong, wrong
    print(f"rank {rank}: {len(ours)} collectives, all through collectives.py on {device}")
    print("COLLECTIVES-OK")


def _spawn() -> None:
    import socket

    import torch.multiprocessing as mp

    from s3_ray.models import load_causal_lm

    load_causal_lm("tiny-random")  # build the cached model once, before the ranks race for it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port), nprocs=2)


def test_every_collective_of_a_training_step_goes_through_the_helper_on_the_group_device() -> None:
    out = run_isolated(__file__, "_spawn()", "COLLECTIVES-OK", timeout=300)
    assert "all through collectives.py" in out
