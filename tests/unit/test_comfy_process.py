"""scripts/comfy_process.py, the one ComfyUI launcher of the main command, the tests and the batch comparisons."""
import sys
import textwrap

import pytest

from scripts.comfy_process import ComfyProcess, NotReady


def _fake_comfyui(tmp_path, body: str):
    (tmp_path / "main.py").write_text(textwrap.dedent(body))
    return tmp_path


def test_a_server_that_exits_while_starting_is_named_with_its_log(tmp_path):
    tree = _fake_comfyui(tmp_path, """
        import sys
        print("Traceback: the custom node failed")
        sys.exit(3)
    """)
    server = ComfyProcess(tree, tmp_path / "log.txt", python=sys.executable).start()
    with pytest.raises(NotReady, match=r"(?s)exited \(3\) while starting.*the custom node failed"):
        server.wait_ready(30)
    server.stop()


def test_ready_when_system_stats_answers_then_stopped(tmp_path, monkeypatch):
    tree = _fake_comfyui(tmp_path, f"""
        import http.server, sys
        port = int(sys.argv[sys.argv.index("--port") + 1])
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/system_stats" else 404); self.end_headers()
        http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """)
    monkeypatch.setenv("DEEPGEN_PID_DIR", str(tmp_path / "pids"))
    server = ComfyProcess(tree, tmp_path / "log.txt", python=sys.executable, base=tmp_path / "base",
                          models=tmp_path / "models")
    cmd = server.command()
    assert cmd[1:] == ["main.py", "--listen", "127.0.0.1", "--port", str(server.port), "--disable-auto-launch", "--cpu",
                       "--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--base-directory",
                       str(tmp_path / "base"), "--extra-model-paths-config", cmd[-1]]
    assert str(tmp_path / "models") in open(cmd[-1]).read()
    server.start()
    assert server.wait_ready(30) >= 0 and list((tmp_path / "pids").iterdir())  # the cleanup traps can find it
    server.stop()
    assert server.proc.poll() is not None and not list((tmp_path / "pids").iterdir())
