#!/usr/bin/env bash
# The test command: sets up (or reuses) the environment outside the repository, then runs
#   unit-tf5      tests/unit under the venv's transformers 5.x
#   unit-tf4      tests/unit under transformers 4.56 (PYTHONPATH overlay)
#   integration   tests/integration against a real ComfyUI 0.3.75 (server + in-process)
#   browser       the web extension in headless Chromium against the real server (tests/browser)
# Usage: bash scripts/test.sh [pytest args...]      e.g.  bash scripts/test.sh -x -k packaging
# Env: DEEPGEN_HOME (default ~/.cache/comfyui-deepgen), DEEPGEN_LEGS (default "unit-tf5 unit-tf4 integration browser").
#      DEEPGEN_COMFY_DIR=<any ComfyUI tree> runs integration + browser against that tree (default: our 0.3.75).
# Exit status: non-zero if any leg fails. A leg that collects no tests fails, unless pytest args were
# given (a -k/path selection may legitimately select nothing in some legs).
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export DEEPGEN_HOME="${DEEPGEN_HOME:-$HOME/.cache/comfyui-deepgen}"
LEGS="${DEEPGEN_LEGS:-unit-tf5 unit-tf4 integration browser}"
export DEEPGEN_LEGS="$LEGS"   # .ci/setup.sh installs the browser tools only for the browser leg
ARTIFACTS="${DEEPGEN_ARTIFACTS:-$REPO/artifacts}"
export DEEPGEN_ARTIFACTS="$ARTIFACTS"
export DEEPGEN_PID_DIR="${DEEPGEN_PID_DIR:-$DEEPGEN_HOME/run/$$}"   # per run: concurrent runs keep their servers
mkdir -p "$ARTIFACTS" "$DEEPGEN_PID_DIR"
t0=$SECONDS

trap 'bash "$REPO/scripts/stop_servers.sh" "$DEEPGEN_PID_DIR"; rmdir "$DEEPGEN_PID_DIR" 2>/dev/null' EXIT

bash "$REPO/.ci/setup.sh" || { echo "setup failed" >&2; exit 1; }
PY="$DEEPGEN_HOME/venv/bin/python"

declare -a SUMMARY=()
FAILED=0
run_leg() {  # run_leg NAME PATH [env assignments...]
  local name="$1" path="$2"; shift 2
  local log="$ARTIFACTS/pytest-$name.log" t=$SECONDS rc last
  echo; echo "=============================== leg: $name ==============================="
  env "$@" "$PY" -m pytest "$path" -p no:cacheprovider --junitxml="$ARTIFACTS/junit-$name.xml" \
      ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"} 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  last="$(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -1 | sed -E 's/^=+ //; s/ =+$//')"
  if [ "$rc" -eq 5 ] && [ ${#PYTEST_ARGS[@]} -gt 0 ]; then
    rc=0; last="nothing selected by the given args"
  elif [ "$rc" -eq 5 ]; then
    last="NO TESTS COLLECTED (a leg must run tests)"
  fi
  [ "$rc" -eq 0 ] || FAILED=1
  local status; status="$([ "$rc" -eq 0 ] && echo ok || echo FAIL)"
  [[ "$rc" -eq 0 && "$last" =~ ^[0-9]+\ skipped\ in ]] && status=SKIP   # e.g. no browser could be installed
  SUMMARY+=("$(printf '%-12s %-4s %4ss  %s' "$name" "$status" "$((SECONDS - t))" "${last:-pytest exit $rc}")")
}

PYTEST_ARGS=("$@")
for leg in $LEGS; do
  case "$leg" in
    unit-tf5) run_leg unit-tf5 tests/unit ;;
    unit-tf4) run_leg unit-tf4 tests/unit "PYTHONPATH=$DEEPGEN_HOME/tf4${PYTHONPATH:+:$PYTHONPATH}" ;;
    integration) run_leg integration tests/integration "DEEPGEN_COMFY_DIR=${DEEPGEN_COMFY_DIR:-$DEEPGEN_HOME/ComfyUI}" "PYTEST_ADDOPTS=-m 'not browser'" ;;
    browser) run_leg browser tests/integration/test_web_browser.py "DEEPGEN_COMFY_DIR=${DEEPGEN_COMFY_DIR:-$DEEPGEN_HOME/ComfyUI}" \
        "DEEPGEN_REQUIRE_BROWSER=${DEEPGEN_REQUIRE_BROWSER:-${DEEPGEN_REQUIRE_INTEGRATION:-0}}" ;;
    *) echo "unknown leg '$leg' (known: unit-tf5 unit-tf4 integration browser)" >&2; exit 2 ;;
  esac
done

echo; echo "=============================== summary ==============================="
printf '%s\n' "${SUMMARY[@]}"
echo "time $((SECONDS - t0))s, $([ "$FAILED" -eq 0 ] && echo 'ALL LEGS PASSED' || echo 'FAILED')"
# One closing line over all legs (errors count as failed), for readers of the last line.
count() { printf '%s\n' "${SUMMARY[@]}" | grep -oE "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
[ "$FAILED" -eq 0 ] || [ "$(count failed)" -gt 0 ] || [ "$(count error)" -gt 0 ] || echo "a leg failed without failing tests (see above)"
echo "total: $(count passed) passed, $(( $(count failed) + $(count error) )) failed, $(count skipped) skipped"
exit "$FAILED"
