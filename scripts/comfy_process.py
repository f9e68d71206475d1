"""A ComfyUI server (its main.py) as a child process: the one launcher of the main command (run_example.py), the
integration tests and the batch comparisons. One command line, one readiness wait, one stop, and pid files that the
cleanup traps read (run_example.sh's, and scripts/stop_servers.sh from DEEPGEN_PID_DIR) if the parent is killed.
Standard library only: run_example.sh runs it with whatever python ComfyUI has.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotReady(RuntimeError):
    """The server exited while starting, or did not answer in time; the message ends with its log."""


class ComfyProcess:
    """main.py of `comfyui` on 127.0.0.1. `base`: its --base-directory; `models`: an extra models/deepgen folder
    (extra_model_paths.yaml); `isolated`: no API nodes and an in-memory database (tests, benches), so runs never
    share state; `cpu`: --cpu."""

    def __init__(self, comfyui, log_path, *, python: str | None = None, base=None, models=None, port: int | None = None,
                 cpu: bool = True, isolated: bool = True, pid_files=()):
        self.comfyui, self.log_path = Path(comfyui), Path(log_path)
        self.python = python or os.environ.get("DEEPGEN_COMFY_PYTHON", sys.executable)
        self.base, self.models, self.cpu, self.isolated = base, models, cpu, isolated
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_pid_files = [Path(p) for p in pid_files]
        self.proc: subprocess.Popen | None = None
        self.pid_files: list[Path] = []

    def command(self) -> list[str]:
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch"]
        if self.cpu:
            cmd.append("--cpu")
        if self.isolated:
            cmd += ["--disable-api-nodes", "--database-url", "sqlite:///:memory:"]
        if self.base is not None:
            cmd += ["--base-directory", str(self.base)]
        if self.models is not None:  # extra_model_paths.yaml: JSON is YAML, so no quoting trouble with odd paths
            cfg = self.log_path.with_name(f"model_paths_{self.port}.yaml")
            cfg.write_text(json.dumps({"deepgen_models": {"deepgen": str(self.models)}}), encoding="utf-8")
            cmd += ["--extra-model-paths-config", str(cfg)]
        return cmd

    def start(self) -> "ComfyProcess":
        """Start main.py (the log is appended to, so a restart keeps what came before)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.comfyui, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         start_new_session=True)
        pid_dir = os.environ.get("DEEPGEN_PID_DIR")
        self.pid_files = self.extra_pid_files + ([Path(pid_dir) / f"comfyui-{self.proc.pid}.pid"] if pid_dir else [])
        for f in self.pid_files:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(str(self.proc.pid))
        return self

    def wait_ready(self, timeout: float) -> float:
        """Seconds until /system_stats answered; NotReady if the server exits first or `timeout` passes."""
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise NotReady(f"ComfyUI exited ({self.proc.returncode}) while starting; its log ({self.log_path}) "
                               f"ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise NotReady(f"ComfyUI did not answer within {timeout:.0f}s; its log ({self.log_path}) ends:\n"
                               f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after `timeout`; the pid files go."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for f in self.pid_files:
            f.unlink(missing_ok=True)

    def kill(self) -> None:
        """kill -9, as a crash or an OOM killer would (the pid files stay, as they would)."""
        self.proc.kill()
        self.proc.wait(20)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
