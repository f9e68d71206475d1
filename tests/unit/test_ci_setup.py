"""The setup helpers of .ci/setup.sh.

.ci/browser-tools.sh: when no Chromium can be installed it must say why (not a guessed cause), wait
briefly for a busy apt, and let the other legs run (exit 1, never abort). .ci/install-torch.py: the CPU
torch build, and a plain statement of what pip would fetch when PyTorch's CPU index is out of reach; a
stop before anything is downloaded when that is PyPI's CUDA build (several GB), unless asked for.
"""
import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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


def _cuda_plan(it, monkeypatch):
    """install-torch with PyTorch's CPU index out of reach and pip offering PyPI's CUDA build (no network:
    reachability and pip are stood in for); returns the list of pip calls made."""
    pypi = "https://files.pythonhosted.org/packages/ab/cd/"
    report = {"install": [_item("torch", "2.13.0", pypi + "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
                          *(_item(f"nvidia-{n}-cu12", "12.8", pypi + f"nvidia_{n}_cu12-12.8-py3-none-any.whl")
                            for n in ("cublas", "cudnn", "nccl", "cusparse"))]}
    calls = []

    def pip(*args, capture=False):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout=json.dumps(report) if "--report" in args else "")

    monkeypatch.setattr(it, "reachable", lambda index: False)
    monkeypatch.setattr(it, "pip", pip)
    return calls


@pytest.mark.parametrize("argv", [[], ["--dry-run"]])
def test_only_the_cuda_build_in_reach_stops_before_downloading_it(monkeypatch, capsys, argv):
    it = _install_torch()
    monkeypatch.delenv("DEEPGEN_ALLOW_CUDA_TORCH", raising=False)
    calls = _cuda_plan(it, monkeypatch)
    assert it.main(argv) == it.EXIT_CUDA_ONLY == 5
    assert [c[:2] for c in calls] == [("install", "--dry-run")]  # planned, never installed
    out, err = capsys.readouterr()
    assert out == ""
    first, *rest = err.splitlines()
    assert first.startswith("torch: STOPPED before downloading anything. PyTorch's CPU index (")
    assert "offer only the CUDA build of torch==2.13.0 torchvision==0.28.0: 4 CUDA packages" in first
    assert any("DEEPGEN_TORCH_INDEX=" in line for line in rest) and any("PIP_FIND_LINKS" in line for line in rest)
    assert any("DEEPGEN_ALLOW_CUDA_TORCH=1 bash scripts/run_example.sh" in line for line in rest)


def test_the_cuda_build_is_installed_when_asked_for(monkeypatch, capsys):
    it = _install_torch()
    monkeypatch.setenv("DEEPGEN_ALLOW_CUDA_TORCH", "1")
    calls = _cuda_plan(it, monkeypatch)
    assert it.main([]) == 0
    assert calls[-1] == ("install", "-q", *it.PINS)
    assert "the CUDA build (4 CUDA packages, several GB), as DEEPGEN_ALLOW_CUDA_TORCH=1 asks" in capsys.readouterr().out


def test_setup_passes_the_refusal_on_and_installs_nothing(tmp_path):
    """.ci/setup.sh (run by run_example.sh) stops with install-torch's status; nothing after it runs."""
    fake = tmp_path / "bin"
    fake.mkdir()
    # a python whose venv's python is this shim: install-torch.py "refuses", pip would record a call
    _tool(fake, "python3.11", f'case "$*" in *"-m venv"*) mkdir -p "$3/bin"; '
                              f'printf "#!/bin/sh\\ncase \\"\\$1\\" in *install-torch.py) echo refused >&2; exit 5;; '
                              f'esac\\necho \\"\\$@\\" >> {tmp_path}/pip-calls\\n" > "$3/bin/python"; '
                              f'chmod +x "$3/bin/python";; esac')
    proc = subprocess.run(["bash", str(REPO / ".ci" / "setup.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": "python3.11",
                               "DEEPGEN_HOME": str(tmp_path / "home"), "DEEPGEN_LEGS": "example"})
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "refused" in proc.stderr and not (tmp_path / "pip-calls").exists()
    assert not (tmp_path / "home" / "venv.stamp").exists()
