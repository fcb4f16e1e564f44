"""Work that loads a model asks Ray for the GPUs it runs on, and a Ray worker that Ray gave no GPU
refuses CUDA. Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a task that requests no GPU, so
without this every such task would load its 7B model onto GPU 0 of its node. Ray is faked: a
stand-in `ray` module runs the tasks in-process and records their options, and a fake runtime
context says which GPUs Ray assigned."""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path

import pytest

from s3_ray.config import load_config
from s3_ray.eval.ray_pairs import ray_map
from s3_ray.eval.runner import MethodRef, run_datasets
from s3_ray.eval.suite import method_refs
from s3_ray.models import load_causal_lm
from s3_ray.resources import ray_assigned_gpus, require_assigned_gpu
from s3_ray.sweep.grid import trial_resources
from tests.fakes import FakeRetriever
from tests.unit.test_eval_pairs import DATA, FakeRay, _fixed
from tests.unit.test_eval_report import EchoGenerator

PAPER = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "s3_paper.yaml"


def test_pairs_whose_method_loads_a_model_request_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    refs = [MethodRef("lm", functools.partial(_fixed, "lm")),
            MethodRef("free", functools.partial(_fixed, "free"), loads_model=False)]
    run_datasets(refs, DATA, EchoGenerator(), tmp_path, log=lambda s: None, map_fn=ray_map(0.5, num_gpus=1))
    assert sorted(map(str, fake.options)) == sorted(map(str, [{"num_cpus": 0.5, "max_retries": 1, "num_gpus": 1},
                                                              {"num_cpus": 0.5, "max_retries": 1}]))


def test_method_refs_say_which_methods_load_a_model() -> None:
    cfg = load_config(None, ["eval.methods=[naive_rag, no_retrieval, s3, cot]", "eval.checkpoints={trained: /x}"])
    assert {r.name: r.loads_model for r in method_refs(cfg, FakeRetriever(), {})} == {
        "naive_rag": False, "no_retrieval": False, "s3_untrained": True, "cot": True, "trained": True}


def test_sweep_trials_reserve_the_gpus_and_node_their_searcher_needs() -> None:
    paper = load_config(PAPER)
    train = trial_resources(paper.with_overrides({"sweep.mode": "train"}))
    assert train == {"train_node": 0.01, "cpu": paper.train.cpus_per_worker, "gpu": 1.0}
    assert trial_resources(paper)["gpu"] == paper.eval.task_gpus == 1
    assert trial_resources(load_config(None, ["eval.task_gpus=0.5"]))["gpu"] == 0.5


def _fake_ray(monkeypatch: pytest.MonkeyPatch, gpus: list[str], mode: int = 1) -> None:
    ctx = types.SimpleNamespace(worker=types.SimpleNamespace(mode=mode),
                                get_accelerator_ids=lambda: {"GPU": gpus, "TPU": []})
    ray = types.ModuleType("ray")
    ray.WORKER_MODE, ray.is_initialized, ray.get_runtime_context = 1, lambda: True, lambda: ctx
    monkeypatch.setitem(sys.modules, "ray", ray)


def test_load_causal_lm_refuses_cuda_where_ray_assigned_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    _fake_ray(monkeypatch, gpus=[])
    assert ray_assigned_gpus() == []
    with pytest.raises(RuntimeError, match=r"Ray assigned it no GPU.*eval.task_gpus"):
        load_causal_lm("tiny-random", device="cuda", gpu_setting="eval.task_gpus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the default device is then CUDA
    with pytest.raises(RuntimeError, match=r"Ray assigned it no GPU.*serve.generator_gpus"):
        load_causal_lm("tiny-random")
    require_assigned_gpu("cpu")                       # CPU is always allowed


def test_gpus_ray_assigned_or_no_ray_worker_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ray(monkeypatch, gpus=["3"])
    require_assigned_gpu("cuda")
    assert ray_assigned_gpus() == ["3"]
    _fake_ray(monkeypatch, gpus=[], mode=0)          # the driver: Ray assigns it nothing, nothing to check
    assert ray_assigned_gpus() is None
    require_assigned_gpu("cuda:0")
    monkeypatch.delitem(sys.modules, "ray")          # no Ray at all: never imported by the check
    assert ray_assigned_gpus() is None and "ray" not in sys.modules
