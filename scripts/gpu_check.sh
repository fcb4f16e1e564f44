#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): the library's update step, rollout and answer
# log-likelihood on CUDA with a 135M- and a 1.5B-shaped random model; peak memory measured beside
# the memory plan's estimate, and step time. Under 8 minutes.
#
# On a bare GPU machine with torch (CUDA), transformers, peft and accelerate and no network: the
# project and pydantic/pyyaml come from the wheels of scripts/gpu_check_wheels.sh, installed into a
# temporary folder (nothing in the system changes). No Ray, vLLM, faiss or bm25s is needed.
#
#   bash scripts/gpu_check.sh [WHEELS_DIR] [-- gpu_check.py options]   # default dist/gpu_check
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheels=$root/dist/gpu_check
if [ $# -gt 0 ] && [ "$1" != "--" ]; then wheels=$1; shift; fi
[ "${1:-}" = "--" ] && shift
py=${PYTHON:-python3}
if [ ! -d "$wheels" ]; then
  echo "error: no wheels at $wheels (build them with scripts/gpu_check_wheels.sh where there is network)" >&2
  exit 2
fi
target=$(mktemp -d)
trap 'rm -rf "$target"' EXIT
"$py" -m pip install --quiet --no-index --no-deps --find-links "$wheels" --target "$target" \
  s3-ray pydantic pydantic-core annotated-types typing-extensions typing-inspection pyyaml
cd "$target"  # the installed project, not a checkout's copy, is what runs
PYTHONPATH="$target" timeout 480 "$py" "$root/scripts/gpu_check.py" "$@"
