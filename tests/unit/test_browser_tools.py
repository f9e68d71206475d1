""".ci/browser-tools.sh, the browser leg's setup: when no Chromium can be installed it must say why
(not a guessed cause), wait briefly for a busy apt, and let the other legs run (exit 1, never abort)."""
import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "browser-tools.sh"
LOCKED = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)"


def _tool(folder: Path, name: str, body: str):
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(tmp_path, fakes: dict[str, str]):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in fakes.items():
        _tool(bin_, name, body)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "DEEPGEN_HOME": str(tmp_path / "home"),
           "DEEPGEN_CHROMIUM": str(tmp_path / "no-chromium"), "DEEPGEN_APT_RETRY_SLEEP": "0"}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_busy_apt_is_retried_then_named_with_a_hint(tmp_path):
    calls = tmp_path / "apt-calls"
    proc = _run(tmp_path, {"apt-get": f'echo "$@" >> {calls}; echo "{LOCKED}" >&2; exit 100'})
    assert proc.returncode == 1
    assert calls.read_text().count("update") == 3  # three attempts
    assert "DPkg::Lock::Timeout=30" in calls.read_text()  # and apt itself waits for the lock each time
    assert proc.stderr.count("apt is busy") == 2
    assert f"apt-get could not install chromium: {LOCKED}" in proc.stderr
    assert "needs root" not in proc.stderr
    assert "will be SKIPPED" in proc.stderr and 'DEEPGEN_LEGS="unit-tf5 unit-tf4 integration"' in proc.stderr


def test_other_apt_errors_are_not_retried(tmp_path):
    calls = tmp_path / "apt-calls"
    proc = _run(tmp_path, {"apt-get": f'echo "$@" >> {calls}; case "$*" in *install*) '
                                      'echo "E: Unable to locate package chromium" >&2; exit 100;; esac'})
    assert proc.returncode == 1 and calls.read_text().count("install") == 1
    assert "apt-get could not install chromium: E: Unable to locate package chromium" in proc.stderr


def test_without_root_or_sudo_says_so(tmp_path):
    proc = _run(tmp_path, {"id": 'case "$1" in -u) echo 1000;; -un) echo tester;; *) echo x;; esac',
                           "sudo": "exit 1", "apt-get": "exit 99"})
    assert proc.returncode == 1
    assert "installing Debian's chromium needs root or passwordless sudo (you are tester)" in proc.stderr
