#!/usr/bin/env bash
# The main command: run DeepGen's text-to-image example end to end in a real ComfyUI and save the image.
#
#   bash scripts/run_example.sh [--comfyui PATH] [--python PY] [--port N] [--models DIR] [--steps N]
#                               [--size WxH] [--seed N] [--prompt TEXT] [--download] [--demo] [--out FILE] ...
# (--demo: no weights needed; a tiny random-weight DeepGen runs the same workflow: a check of the install)
# Without --comfyui it sets up (once, then reuses) a CPU-only ComfyUI 0.3.75 + this pack OUTSIDE the
# repository, in $DEEPGEN_HOME (default ~/.cache/comfyui-deepgen; the same environment as the tests), with
# its own ComfyUI folders (custom_nodes/, models/, output/) in $DEEPGEN_HOME/workspace (--base-dir).
# With --comfyui PATH it uses your ComfyUI: links this pack into PATH/custom_nodes (if it is not there
# already) and runs PATH's python (PATH/venv or PATH/.venv, else python3; override with --python).
# Then it checks the weights in --models DIR (default: <ComfyUI or --base-dir>/models/deepgen, so without
# --comfyui ~/.cache/comfyui-deepgen/workspace/models/deepgen): if any file is missing it prints each one
# with its URL and destination plus the download command, and exits 3. Otherwise it starts ComfyUI on
# 127.0.0.1, queues example_workflows/api/text_to_image.json, waits for the image, prints its path and
# stops the server. Options are checked before any setup. Every option: bash scripts/run_example.sh --help.
# Exit status: 0 image saved, 1 other errors, 2 a bad option, 3 weights missing, 4 --download failed,
# 5 setup stopped before downloading PyPI's CUDA torch build (DEEPGEN_ALLOW_CUDA_TORCH=1 accepts it).
# Env: DEEPGEN_EXAMPLE_STEPS / _SIZE / _MODELS / _PORT / _TIMEOUT are defaults for the flags.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PACK_NAME="ComfyUI-DeepGen"  # the custom_nodes folder name (it names /extensions/ComfyUI-DeepGen/)

COMFY="" PY="" BASE="" ARGS=()
DEEPGEN_EXAMPLE_CMD="$(printf '%q ' bash scripts/run_example.sh "$@")"  # shown in "run again" hints
export DEEPGEN_EXAMPLE_CMD
while [ $# -gt 0 ]; do
  case "$1" in
    --comfyui) COMFY="${2:?--comfyui needs a path}"; shift 2 ;;
    --comfyui=*) COMFY="${1#*=}"; shift ;;
    --python) PY="${2:?--python needs a path}"; shift 2 ;;
    --python=*) PY="${1#*=}"; shift ;;
    --base-dir) BASE="${2:?--base-dir needs a path}"; shift 2 ;;
    --base-dir=*) BASE="${1#*=}"; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; echo
               exec "${PY:-python3}" "$REPO/scripts/run_example.py" --help ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

link_pack() {  # link_pack CUSTOM_NODES_DIR: make this checkout importable there as $PACK_NAME
  local dir="$1" here
  mkdir -p "$dir"
  [ "$(cd "$REPO/.." && pwd -P)" = "$(cd "$dir" && pwd -P)" ] && return 0   # the checkout lives there already
  here="$dir/$PACK_NAME"
  if [ -L "$here" ] || [ -e "$here" ]; then
    if [ "$(cd "$here" 2>/dev/null && pwd -P)" != "$(cd "$REPO" && pwd -P)" ]; then
      echo "run_example: $here exists and is not this checkout ($REPO); remove or rename it, or run from it." >&2
      exit 1
    fi
  else
    ln -s "$REPO" "$here"
    echo "linked $here -> $REPO"
  fi
}

# Bad options are refused now, not after minutes of setup (the helper is standard library only).
CHECK_PY="${PY:-$(command -v "${PYTHON:-python3.11}" || command -v python3 || true)}"
if [ -n "$CHECK_PY" ]; then
  "$CHECK_PY" "$REPO/scripts/run_example.py" --check-options ${ARGS[@]+"${ARGS[@]}"} || exit $?
fi

if [ -z "$COMFY" ]; then
  export DEEPGEN_HOME="${DEEPGEN_HOME:-$HOME/.cache/comfyui-deepgen}"
  command -v "${PYTHON:-python3.11}" >/dev/null 2>&1 || export PYTHON="${PYTHON:-python3}"
  echo "setting up (or reusing) a CPU-only ComfyUI 0.3.75 in $DEEPGEN_HOME (the first run installs ~2 GB of packages: the first --demo takes 2–8 minutes, setup included)"
  DEEPGEN_LEGS=example bash "$REPO/.ci/setup.sh"   # the test environment minus the browser leg's Chromium/npm
  COMFY="$DEEPGEN_HOME/ComfyUI"
  PY="${PY:-$DEEPGEN_HOME/venv/bin/python}"
  BASE="${BASE:-$DEEPGEN_HOME/workspace}"
else
  [ -f "$COMFY/main.py" ] || { echo "run_example: --comfyui $COMFY is not a ComfyUI folder (no main.py)" >&2; exit 1; }
  if [ -z "$PY" ]; then
    for cand in "$COMFY/venv/bin/python" "$COMFY/.venv/bin/python" "$(command -v python3 || true)"; do
      [ -n "$cand" ] && [ -x "$cand" ] && { PY="$cand"; break; }
    done
  fi
  [ -n "$PY" ] || { echo "run_example: no python found for $COMFY; pass --python" >&2; exit 1; }
  if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in
      ("torch", "transformers", "diffusers", "safetensors", "accelerate")))' 2>/dev/null; then
    echo "run_example: $PY lacks the pack's dependencies. Install them into your ComfyUI's Python:" >&2
    echo "  $PY -m pip install -r $REPO/requirements.txt" >&2
    exit 1
  fi
fi

if [ -n "$BASE" ]; then
  [ -d "$BASE" ] || echo "creating $BASE (ComfyUI's custom_nodes/, input/, output/, user/ and models/deepgen/ for this run)"
  mkdir -p "$BASE"/{custom_nodes,input,output,user,models/deepgen}
  BASE="$(cd "$BASE" && pwd)"
  link_pack "$BASE/custom_nodes"
  ARGS=(--base-dir "$BASE" ${ARGS[@]+"${ARGS[@]}"})
else
  link_pack "$COMFY/custom_nodes"
fi

# The python helper stops the server itself; this trap covers a helper killed outright.
PIDFILE="$(mktemp "${TMPDIR:-/tmp}/deepgen-example.XXXXXX")"
cleanup() {
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  rm -f "$PIDFILE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rc=0
DEEPGEN_EXAMPLE_PIDFILE="$PIDFILE" "$PY" "$REPO/scripts/run_example.py" --comfyui "$COMFY" ${ARGS[@]+"${ARGS[@]}"} || rc=$?
exit "$rc"
