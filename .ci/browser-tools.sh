#!/usr/bin/env bash
# The browser leg's tools (called by .ci/setup.sh when DEEPGEN_LEGS has "browser"):
#   Chromium   $DEEPGEN_CHROMIUM, or `chromium` on PATH, or Debian's package (apt-get, root or sudo -n;
#              a busy apt/dpkg lock is waited for and retried briefly)
#   node >= 20 + playwright-core (npm ci, pinned by tests/browser/package-lock.json, gitignored)
# Never stops the other legs: when a tool cannot be had it prints the real cause and how to go on, and
# exits 1. The browser leg then skips (it fails instead where DEEPGEN_REQUIRE_BROWSER=1, as in CI).
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEEPGEN_HOME="${DEEPGEN_HOME:-$HOME/.cache/comfyui-deepgen}"
LOCK_WAIT="${DEEPGEN_APT_LOCK_WAIT:-30}"   # seconds apt waits for the dpkg lock, per attempt (3 attempts)
RETRY_SLEEP="${DEEPGEN_APT_RETRY_SLEEP:-10}"

find_chromium() {
  if [ -n "${DEEPGEN_CHROMIUM:-}" ]; then [ -x "$DEEPGEN_CHROMIUM" ] && echo "$DEEPGEN_CHROMIUM"; return; fi
  command -v chromium || command -v chromium-browser
}

install_chromium() {  # on failure prints the cause (one line) on stdout
  local sudo="" out try
  command -v apt-get >/dev/null 2>&1 || { echo "no apt-get here to install Debian's chromium"; return 1; }
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || { echo "installing Debian's chromium needs root or passwordless sudo (you are $(id -un))"; return 1; }
    sudo="sudo -n"
  fi
  for try in 1 2 3; do
    echo "installing Debian's chromium (apt-get, attempt $try/3)" >&2
    out="$($sudo apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT" update -qq 2>&1 \
           && DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT" install -y -qq chromium 2>&1)" \
      && return 0
    case "$out" in
      *"Could not get lock"*|*"Unable to acquire"*|*"Unable to lock"*|*"is held by"*)
        [ "$try" -lt 3 ] && { echo "apt is busy (another apt/dpkg holds its lock); retrying in ${RETRY_SLEEP}s" >&2; sleep "$RETRY_SLEEP"; continue; } ;;
    esac
    break
  done
  echo "apt-get could not install chromium: $(printf '%s\n' "$out" | grep -E '^(E|W|Err):' | tail -2 | tr '\n' ' ' | sed 's/ *$//')"
  return 1
}

problem=""
if [ -z "$(find_chromium)" ]; then
  problem="$(install_chromium)" || true
  [ -z "$problem" ] && [ -z "$(find_chromium)" ] && problem="apt-get installed chromium, but ${DEEPGEN_CHROMIUM:-chromium on PATH} is still not found"
fi
if [ -z "$problem" ] && ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null; then
  problem="the browser leg needs Node.js >= 20 and npm (found: $(node --version 2>/dev/null || echo none))"
fi
if [ -z "$problem" ]; then
  H_NPM=$(sha256sum "$REPO/tests/browser/package-lock.json" | cut -c1-16)
  if [ ! -f "$DEEPGEN_HOME/npm.stamp" ] || [ "$(cat "$DEEPGEN_HOME/npm.stamp")" != "$H_NPM" ] \
     || [ ! -d "$REPO/tests/browser/node_modules/playwright-core" ]; then
    if out="$(cd "$REPO/tests/browser" && npm ci --no-audit --no-fund --loglevel=error 2>&1)"; then
      echo "$H_NPM" > "$DEEPGEN_HOME/npm.stamp"
    else
      problem="npm ci in tests/browser failed: $(printf '%s\n' "$out" | grep -m1 -iE 'err' || printf '%s\n' "$out" | tail -1)"
    fi
  fi
fi
if [ -n "$problem" ]; then
  echo "browser leg: no browser tools, so it will be SKIPPED: $problem" >&2
  echo "  Fix it and run again, or leave the leg out: DEEPGEN_LEGS=\"unit-tf5 unit-tf4 integration\" bash scripts/test.sh" >&2
  echo "  (DEEPGEN_CHROMIUM=/path/to/chromium uses a Chromium you already have; DEEPGEN_REQUIRE_BROWSER=1 makes it a failure.)" >&2
  exit 1
fi
echo "browser: $("$(find_chromium)" --version 2>/dev/null | head -1), node $(node --version), playwright-core $(node -p "require('$REPO/tests/browser/node_modules/playwright-core/package.json').version")"
