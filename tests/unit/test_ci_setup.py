"""The setup helpers of .ci/setup.sh.

.ci/browser-tools.sh: when no Chromium can be installed it must say why (not a guessed cause), wait
briefly for a busy apt, and let the other legs run (exit 1, never abort). .ci/install-torch.py: the CPU
torch build, and a plain statement of what pip would fetch when PyTorch's CPU index is out of reach.
"""
import importlib.util
import os
import socket
import stat
import subprocess
import sys
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


def _install_torch():
    spec = importlib.util.spec_from_file_location("install_torch", REPO / ".ci" / "install-torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _item(name, version, url):
    return {"metadata": {"name": name, "version": version}, "download_info": {"url": url}}


def test_torch_pins_come_from_the_comfy_requirements():
    assert _install_torch().PINS == ["torch==2.13.0", "torchvision==0.28.0"]


def test_what_pip_would_fetch_is_named_and_cuda_is_flagged(tmp_path):
    it = _install_torch()
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"x" * 3_000_000)
    lines, cuda = it.describe({"install": [_item("torch", "2.13.0+cpu", wheel.as_uri())]})
    assert lines == [f"  torch 2.13.0+cpu (local file, 3 MB): {wheel.name}"] and cuda == []
    pypi = "https://files.pythonhosted.org/packages/ab/cd/"
    lines, cuda = it.describe({"install": [
        _item("torch", "2.13.0", pypi + "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
        _item("nvidia-cublas-cu12", "12.8.4.1", pypi + "nvidia_cublas_cu12-12.8.4.1-py3-none-manylinux_2_27_x86_64.whl"),
        _item("nvidia-cudnn-cu12", "9.10.2.21", pypi + "nvidia_cudnn_cu12-9.10.2.21-py3-none-manylinux_2_27_x86_64.whl")]})
    assert lines[0] == "  torch 2.13.0 (download): torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert cuda == ["nvidia-cublas-cu12", "nvidia-cudnn-cu12"]


def test_unreachable_cpu_index_is_reported_before_anything_is_fetched(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        index = f"http://127.0.0.1:{s.getsockname()[1]}/whl/cpu"
    proc = subprocess.run([sys.executable, str(REPO / ".ci" / "install-torch.py"), "--dry-run"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DEEPGEN_TORCH_INDEX": index})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"torch: PyTorch's CPU index ({index}) is not reachable; pip's own sources give:")
