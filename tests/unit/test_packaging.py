"""The extras in pyproject.toml and what setup.sh accepts: at most one faiss build per extra, the
GPU stack pinned inside the project's own ranges, and the docs naming the pinned versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[2]
FAISS_BUILDS = {"faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11"}
needs_tomllib = pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _extras() -> dict[str, set[str]]:
    """Each extra -> the distribution names it installs, self-references (s3-ray[x]) expanded."""
    raw = _project()["optional-dependencies"]

    def names(extra: str) -> set[str]:
        out: set[str] = set()
        for req in map(Requirement, raw[extra]):
            if req.name == "s3-ray":
                for inner in req.extras:
                    out |= names(inner)
            else:
                out.add(req.name)
        return out

    return {extra: names(extra) for extra in raw}


@needs_tomllib
def test_each_extra_installs_at_most_one_faiss_build() -> None:
    extras, builds = _extras(), FAISS_BUILDS
    assert extras["dense"] & builds == {"faiss-cpu"} and extras["dense-gpu"] & builds == {"faiss-gpu"}
    assert "sentence-transformers" in extras["dense"] & extras["dense-gpu"]
    for extra, dists in extras.items():
        assert len(dists & builds) <= 1, f"extra {extra!r} installs {sorted(dists & builds)}"
    assert not extras["gpu"] & builds, "the gpu extra is the vLLM stack; faiss-gpu comes with dense-gpu"


def test_setup_refuses_both_faiss_builds(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    done = subprocess.run(["bash", str(ROOT / "setup.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "VENV": str(venv), "S3RAY_EXTRAS": "test, dense,dense-gpu"})
    assert done.returncode == 2
    assert "names both dense (faiss-cpu) and dense-gpu (faiss-gpu)" in done.stderr
    assert not venv.exists()                   # refused before anything was created or installed


@needs_tomllib
def test_gpu_extra_pins_vllm_and_a_transformers_range_inside_the_projects() -> None:
    project = _project()
    base = {r.name: r for r in map(Requirement, project["dependencies"])}
    gpu = {r.name: r for r in map(Requirement, project["optional-dependencies"]["gpu"])}
    [vllm] = gpu["vllm"].specifier
    assert vllm.operator == "==", "the GPU stack is pinned: a newer vllm moves torch and transformers"
    releases = [Version(f"{major}.{minor}.{patch}") for major in (4, 5, 6) for minor in range(40)
                for patch in range(3)]
    admitted = [v for v in releases if v in gpu["transformers"].specifier]
    assert admitted, "the gpu extra's transformers range admits no release"
    assert all(v in base["transformers"].specifier for v in admitted)
    assert not set(gpu) & FAISS_BUILDS
    ops = (ROOT / "docs" / "operations.md").read_text()         # "Supported versions" names the pins
    written = next(r for r in project["optional-dependencies"]["gpu"] if Requirement(r).name == "transformers")
    assert f"`=={vllm.version}`" in ops and f"`{written.removeprefix('transformers')}`" in ops
