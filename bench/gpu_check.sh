#!/usr/bin/env bash
# One-shot GPU check (docs/performance.md, "GPU"): real-size random weights, nothing downloaded, one JSON.
# Sized to finish in under 8 minutes on one H200 (bench/gpu_check.py says what each phase measures).
#
#   bash bench/gpu_check.sh --json gpu_check.json       # on the CUDA machine
#   bash bench/gpu_check.sh --dry-run --json /tmp/g.json # here, on a CPU: the same code path, tiny sizes
#
# A GPU machine that cannot download may lack diffusers and bitsandbytes. Make them a folder to carry
# with the checkout, once, on a machine with PyPI (the GPU image's python is 3.12 with CUDA 13 torch):
#
#   bash bench/gpu_check.sh --prepare-carry    # -> .gpu_carry/site (git-ignored), about 40 MiB
#
# Only bitsandbytes' CUDA 13 and CPU libraries are kept (the wheel holds one per CUDA version).
# This script puts .gpu_carry/site on PYTHONPATH when it exists; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--prepare-carry" ]]; then
  rm -rf "$CARRY"
  mkdir -p "$CARRY/wheels" "$CARRY/site"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_24_x86_64 --platform any -d "$CARRY/wheels" \
    "diffusers==${DIFFUSERS_VERSION:-0.42.1}" "bitsandbytes==${BNB_VERSION:-0.50.2}"
  for w in "$CARRY"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$CARRY/site"; done
  find "$CARRY/site/bitsandbytes" -name 'libbitsandbytes_*' ! -name '*cuda13*' ! -name '*cpu*' -delete
  rm -rf "$CARRY/wheels"
  du -sh "$CARRY"
  exit 0
fi

if [[ -d "$CARRY/site" ]]; then
  export PYTHONPATH="$PWD/$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py "$@"
