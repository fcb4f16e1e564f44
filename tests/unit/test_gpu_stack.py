"""setup.sh's CUDA check (s3_ray/gpu_stack.py) with every version faked: torch's CUDA, faiss-gpu's
CUDA and the driver's must agree, and each mismatch says in one line what to install."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from s3_ray.gpu_stack import CudaStack, check_cuda_stack, driver_cuda_version, faiss_cuda_major

ROOT = Path(__file__).resolve().parents[2]


def test_cuda13_torch_on_a_cuda12_driver_is_refused_naming_what_to_install() -> None:
    # the PyPI torch 2.13.0 (CUDA 13) falls back to CPU there while faiss-gpu (CUDA 12) sees the GPUs
    [line] = check_cuda_stack(CudaStack("2.13.0", "13.0", False, "12", "12.8"))
    assert "torch 2.13.0 is built for CUDA 13.0 but the NVIDIA driver runs CUDA up to 12.8" in line
    assert "driver for CUDA 13" in line and "torch 2.13.0 build for CUDA 12" in line and "\n" not in line


@pytest.mark.parametrize(("stack", "expected"), [
    (CudaStack("2.13.0", "13.0", True, "12", "13.0"), []),            # one driver runs both runtimes
    (CudaStack("2.13.0", "13.0", True, None, "13.2"), []),            # no GPU faiss: nothing to check there
    (CudaStack("2.13.0+cpu", None, False, "12", "12.4"), ["CPU build on a CUDA host"]),
    (CudaStack("2.13.0", "12.8", True, "13", "12.8"), ["faiss-gpu is built for CUDA 13"]),
    (CudaStack("2.13.0", "13.0", False, "12", "13.0"), ["sees no GPU although the driver runs CUDA 13.0"]),
    (CudaStack("2.13.0", "13.0", False, "12", None), ["nvidia-smi reports no CUDA version"]),
])
def test_stacks(stack: CudaStack, expected: list[str]) -> None:
    problems = check_cuda_stack(stack)
    assert len(problems) == len(expected)
    assert all(want in got for want, got in zip(expected, problems))


def test_versions_are_read_from_nvidia_smi_and_faiss_metadata() -> None:
    assert driver_cuda_version(lambda cmd: "Driver Version: 580.1      CUDA Version: 13.0  ") == "13.0"

    def missing(cmd):
        raise FileNotFoundError(cmd[0])

    assert driver_cuda_version(missing) is None

    def requires(dist: str):
        if dist == "faiss-gpu-cu12":
            return ["numpy"]
        raise importlib.metadata.PackageNotFoundError(dist)

    assert faiss_cuda_major(requires) == "12"

    def none(dist: str):
        raise importlib.metadata.PackageNotFoundError(dist)

    assert faiss_cuda_major(none) is None


def test_setup_sh_runs_the_check_on_cuda_hosts_only() -> None:
    text = (ROOT / "setup.sh").read_text()
    block = re.search(r'if \[ "\$CUDA_HOST" = 1 \]; then\n((?:  .*\n)+)fi', text[text.index("gpu_stack") - 400:])
    assert block and "-m s3_ray.gpu_stack" in block.group(1) and "die" in block.group(1)
