"""The files users hand to `serve deploy`, `ray up` and `ray job submit` must resolve."""

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _resolve(import_path: str):
    module, attr = import_path.split(":")
    return getattr(importlib.import_module(module), attr)


def test_serve_config_apps_import_and_validate():
    cfg = yaml.safe_load((ROOT / "deployments" / "serve_config.yaml").read_text())
    assert cfg["http_options"]["host"] == "127.0.0.1"
    apps = {a["name"]: a for a in cfg["applications"]}
    assert set(apps) == {"retriever", "generator", "copilot"}
    from deployments.copilot import CopilotAppArgs
    from deployments.generator import GeneratorAppArgs
    from deployments.retriever import RetrieverAppArgs

    assert callable(_resolve(apps["retriever"]["import_path"]))
    assert callable(_resolve(apps["generator"]["import_path"]))
    assert callable(_resolve(apps["copilot"]["import_path"]))
    assert CopilotAppArgs.model_validate(apps["copilot"]["args"]).retriever == "retriever"
    r = RetrieverAppArgs.model_validate(apps["retriever"]["args"])
    g = GeneratorAppArgs.model_validate(apps["generator"]["args"])
    assert r.retrieval.index_dir == "runs/demo/index"
    assert g.generator.model == "smollm2-135m-instruct"


def test_cluster_yaml_has_head_and_gpu_workers():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert {"gpu_train", "gpu_serve"} <= set(types)
    # the node's Python is pinned (the gpu extra needs 3.11+) and Ray starts from the venv setup.sh builds
    assert any("PYTHON=python3.11" in c and "setup.sh" in c and "gpu" in c for c in cfg["setup_commands"])
    assert all(".venv/bin/ray" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    for name, t in types.items():
        assert t["max_workers"] >= t["min_workers"] >= 0, name


@pytest.mark.parametrize("name", ["demo", "build_index", "serve", "precompute", "train", "evaluate", "sweep", "infer"])
def test_every_job_has_main_and_help(name, capsys):
    from jobs.cli import SUBCOMMANDS

    module = importlib.import_module(f"jobs.{name}")
    assert f"jobs.{name}" in SUBCOMMANDS.values()
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_cli_rejects_unknown_subcommand(capsys):
    from jobs.cli import main

    assert main(["nope"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
    assert main([]) == 0


def test_configs_validate():
    from s3_ray.config import load_config

    for path in (ROOT / "jobs" / "configs").glob("*.yaml"):
        load_config(path)
