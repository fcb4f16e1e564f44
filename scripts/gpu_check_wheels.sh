#!/usr/bin/env bash
# Build the wheels scripts/gpu_check.sh installs on a bare GPU machine (torch, transformers, peft and
# accelerate there; no network): the project itself and what it imports beyond those, at the
# versions installed here, for Python 3.10-3.13 on x86_64 Linux. At most 64 MiB in all.
#
#   bash scripts/gpu_check_wheels.sh [OUT_DIR]        # default dist/gpu_check
#   PYTHON=/path/to/python PY_VERSIONS="3.12" bash scripts/gpu_check_wheels.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/dist/gpu_check}
py=${PYTHON:-python3}
limit=$((64 * 1024 * 1024))

rm -rf "$out"
mkdir -p "$out"
"$py" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" "$root"
pins=$("$py" - <<'PY'
from importlib.metadata import version
for name in ("pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection", "pyyaml"):
    print(f"{name}=={version(name)}")
PY
)
for ver in ${PY_VERSIONS:-3.10 3.11 3.12 3.13}; do
  # shellcheck disable=SC2086  # one argument per pin
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$ver" \
    --platform manylinux2014_x86_64 --dest "$out" $pins
done
size=$(du -sb "$out" | cut -f1)
echo "gpu_check wheels: $out ($((size / 1024 / 1024)) MiB, $(ls "$out" | wc -l) files)"
if [ "$size" -gt "$limit" ]; then
  echo "error: $out is $size bytes, over the 64 MiB the GPU check may carry" >&2
  exit 1
fi
