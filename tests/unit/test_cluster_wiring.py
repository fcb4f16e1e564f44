"""The paper config runs where cluster.yaml means it to: Train workers ask for the resource only
gpu_train nodes advertise, Serve replicas for the one only gpu_serve nodes advertise, and the
run's checkpoints go to `train.storage_path`, refused when the default local folder would be
used on more than one node. Ray Train's trainer is faked: it records what it is built with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from s3_ray.config import ConfigError, load_config
from s3_ray.rl.ray_train import launch

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "jobs" / "configs" / "s3_paper.yaml"


def _node_types() -> dict[str, dict[str, float]]:
    """Node type -> the custom resources it advertises."""
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    return {name: dict(t.get("resources") or {}) for name, t in cluster["available_node_types"].items()}


def _only_on(resources: dict[str, float], node_type: str) -> None:
    """Every custom resource is advertised by `node_type` (enough for one request), and by no other."""
    types = _node_types()
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    assert custom, f"nothing keeps this work on {node_type}"
    for key, amount in custom.items():
        assert types[node_type].get(key, 0) >= amount, (key, node_type)
        assert [t for t, res in types.items() if key in res] == [node_type], key


class _FakeTrainer:
    built: list[dict[str, Any]] = []

    def __init__(self, loop: Any, **kwargs: Any) -> None:
        _FakeTrainer.built.append(kwargs)

    def fit(self) -> str:
        return "result"


def _train(monkeypatch: pytest.MonkeyPatch, cfg: Any, nodes: int) -> dict[str, Any]:
    import ray.train.torch

    _FakeTrainer.built.clear()
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", _FakeTrainer)
    monkeypatch.setattr(launch, "_alive_nodes", lambda: nodes)
    logs: list[str] = []
    assert launch.run_training(cfg, [], None, object(), name="t", log=logs.append) == "result"
    return {**_FakeTrainer.built[0], "logs": logs}


def test_train_workers_land_on_train_nodes_and_checkpoint_to_shared_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    paper = load_config(PAPER)
    built = _train(monkeypatch, paper, nodes=3)
    per_worker = built["scaling_config"].resources_per_worker
    assert per_worker["GPU"] == 1 and per_worker["CPU"] == paper.train.cpus_per_worker
    _only_on(per_worker, "gpu_train")
    assert built["run_config"].storage_path == paper.train.storage_path and paper.train.storage_path.startswith("s3://")
    assert built["logs"] == []


def test_serve_replicas_land_on_serve_nodes() -> None:
    from s3_ray.serving import replica_options

    serve = load_config(PAPER).serve
    for app in ("retriever", "generator", "copilot"):
        _only_on(replica_options(serve, app, app)["ray_actor_options"]["resources"], "gpu_serve")


def test_a_local_storage_path_on_several_nodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    assert _train(monkeypatch, cfg, nodes=1)["run_config"].storage_path == str(tmp_path / "ray")
    with pytest.raises(ConfigError, match=r"train.storage_path is not set and the cluster has 2 nodes"):
        _train(monkeypatch, cfg, nodes=2)
    nfs = cfg.with_overrides({"train.storage_path": str(tmp_path / "nfs")})
    built = _train(monkeypatch, nfs, nodes=2)
    assert built["run_config"].storage_path == str(tmp_path / "nfs")
    assert "is a local folder on a cluster of 2 nodes" in built["logs"][0]
    gcs = cfg.with_overrides({"train.storage_path": "gs://bucket/runs"})
    assert _train(monkeypatch, gcs, nodes=4)["run_config"].storage_path == "gs://bucket/runs"


def test_the_paper_generator_is_the_generator_serve_app() -> None:
    """No outside server: the generator app loads the model itself (on its serve-node GPUs)."""
    paper = load_config(PAPER)
    assert paper.generator.backend != "openai" and paper.generator.base_url is None
