#!/usr/bin/env bash
# Stop the ComfyUI servers that test runs started and left behind (pytest killed before its teardown).
# Usage: bash scripts/stop_servers.sh PID_DIR     (the conftest writes PID_DIR/comfyui-<pid>.pid)
# Only a pid whose command line is still a ComfyUI main.py started with --base-directory is signalled.
set -uo pipefail
DIR="${1:?usage: stop_servers.sh PID_DIR}"
for f in "$DIR"/comfyui-*.pid; do
  [ -e "$f" ] || continue
  pid="$(cat "$f")"
  if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'main.py .*--base-directory'; then
    echo "stopping leftover ComfyUI server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
done
exit 0
