"""Whether torch, faiss and the NVIDIA driver of a CUDA host agree on CUDA.

torch 2.13.0 from PyPI is a CUDA 13 build, while faiss-gpu loads CUDA 12 runtime libraries. A
driver runs a CUDA runtime only up to the CUDA version it reports (`nvidia-smi`), so on an older
driver torch silently falls back to CPU (`torch.cuda.is_available()` is False) while faiss still
sees the GPUs. `check_cuda_stack` finds that and says in one line what to install;
`setup.sh` runs this module (`python -m s3_ray.gpu_stack`) on a host with `nvidia-smi`.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

TORCH_WHEELS = "https://download.pytorch.org/whl/"


@dataclass(frozen=True)
class CudaStack:
    """What a host has: `None` where a part is absent (a CPU build, no GPU faiss, no driver)."""

    torch_version: str
    torch_cuda: str | None      # torch.version.cuda, e.g. "13.0"
    torch_sees_gpu: bool        # torch.cuda.is_available()
    faiss_cuda: str | None      # the CUDA major the installed GPU faiss is built for, e.g. "12"
    driver_cuda: str | None     # the highest CUDA version the driver runs (nvidia-smi), e.g. "12.4"


def _major(version: str) -> int:
    return int(version.split(".")[0])


def check_cuda_stack(s: CudaStack) -> list[str]:
    """One line per disagreement, each saying what to install; [] when the stack works.

    >>> check_cuda_stack(CudaStack("2.13.0", "13.0", True, "12", "13.0"))
    []
    >>> check_cuda_stack(CudaStack("2.13.0", "13.0", False, "12", "12.4"))[0]  # doctest: +ELLIPSIS
    'torch 2.13.0 is built for CUDA 13.0 but the NVIDIA driver runs CUDA up to 12.4: ...'
    """
    torch_name = f"torch {s.torch_version}"
    if s.driver_cuda is None:
        return ["nvidia-smi reports no CUDA version: install the NVIDIA driver (or run setup.sh on a CPU host "
                "without nvidia-smi)"]
    problems = []
    if s.torch_cuda is None:
        problems.append(f"{torch_name} is a CPU build on a CUDA host: pip install --force-reinstall "
                        f"'torch=={s.torch_version.split('+')[0]}' (the PyPI wheel is the CUDA build)")
    elif _major(s.torch_cuda) > _major(s.driver_cuda):
        problems.append(f"{torch_name} is built for CUDA {s.torch_cuda} but the NVIDIA driver runs CUDA up to "
                        f"{s.driver_cuda}: install a driver for CUDA {_major(s.torch_cuda)}, or a torch "
                        f"{s.torch_version.split('+')[0]} build for CUDA {_major(s.driver_cuda)} "
                        f"({TORCH_WHEELS}cu{_major(s.driver_cuda)}x, pip install --index-url ...)")
    elif not s.torch_sees_gpu:
        problems.append(f"{torch_name} (CUDA {s.torch_cuda}) sees no GPU although the driver runs CUDA "
                        f"{s.driver_cuda}: check CUDA_VISIBLE_DEVICES and that the driver's kernel module is loaded "
                        "(nvidia-smi lists the GPUs)")
    if s.faiss_cuda is not None and _major(s.faiss_cuda) > _major(s.driver_cuda):
        problems.append(f"faiss-gpu is built for CUDA {s.faiss_cuda} but the NVIDIA driver runs CUDA up to "
                        f"{s.driver_cuda}: install a driver for CUDA {_major(s.faiss_cuda)}, or use faiss-cpu "
                        "(S3RAY_EXTRAS with dense instead of dense-gpu)")
    return problems


def faiss_cuda_major(requires: Callable[[str], list[str] | None] = importlib.metadata.requires) -> str | None:
    """The CUDA major of the installed GPU faiss (from its name, faiss-gpu-cu12, or from the
    nvidia-*-cuNN runtime wheels it requires); None without one, or when it does not say.

    >>> faiss_cuda_major(lambda d: ["numpy", "nvidia-cuda-runtime-cu12>=12.1"] if d == "faiss-gpu" else None)
    '12'
    """
    for dist in ("faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu"):
        try:
            reqs = requires(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if reqs is None:
            continue
        if m := re.search(r"-cu(\d+)$", dist):
            return m.group(1)
        for req in reqs:
            if m := re.match(r"nvidia-[a-z0-9-]+?-cu(\d+)\b", req):
                return m.group(1)
    return None


def driver_cuda_version(run: Callable[[list[str]], str] | None = None) -> str | None:
    """The "CUDA Version" nvidia-smi reports (the highest the driver runs); None without one.

    >>> driver_cuda_version(lambda cmd: "| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |")
    '12.4'
    """
    def default(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).stdout

    try:
        out = (run or default)(["nvidia-smi"])
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"CUDA Version:\s*([\d.]+)", out)
    return m.group(1) if m else None


def probe() -> CudaStack:
    """This host's stack (imports torch)."""
    import torch

    return CudaStack(torch.__version__, torch.version.cuda, bool(torch.cuda.is_available()), faiss_cuda_major(),
                     driver_cuda_version())


def main() -> int:
    stack = probe()
    problems = check_cuda_stack(stack)
    for line in problems:
        print(f"[setup] error: {line}", file=sys.stderr)
    if not problems:
        print(f"[setup] CUDA ok: torch {stack.torch_version} (CUDA {stack.torch_cuda}) sees the GPUs, faiss CUDA "
              f"{stack.faiss_cuda or '-'}, driver CUDA {stack.driver_cuda}")
    return 2 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
