"""Integration harness: the pack inside a REAL ComfyUI (0.3.75 in CI, any newer tree via DEEPGEN_COMFY_DIR),
as an HTTP server and in-process.

Needs DEEPGEN_COMFY_DIR (the ComfyUI tree that .ci/setup.sh extracts). Without it every test here
is skipped, or ERRORs when DEEPGEN_REQUIRE_INTEGRATION=1 (CI). scripts/test.sh sets both up.
Differences between ComfyUI releases are handled here, never in the tests: ComfyServer.log_text (log format)
and InProcessComfy (the only code that touches the executor); the server is used through HTTP and /ws only.

Session fixtures:
  comfy_dir        Path   the ComfyUI tree (never modified)
  comfy_base       Path   the --base-directory: custom_nodes/ComfyUI-DeepGen -> repo root, input/, output/
  comfy_models     Path   comfy_base/"models". To put weights in place BEFORE the server starts, override it
                          (request the parent: ``def comfy_models(comfy_models): ...; return comfy_models``);
                          ComfyUI rescans model folders on every listing, so later additions are seen too.
  comfy_server     ComfyServer      real ``main.py`` on 127.0.0.1 (see the class for helpers)
  comfy_inprocess  InProcessComfy   ComfyUI's PromptExecutor in this process (see the class)
  artifacts_dir    Path   ./artifacts (or $DEEPGEN_ARTIFACTS): server log, screenshots
  release          Path   the tiny diffusers release at models/deepgen/DeepGen-1.0-diffusers (the real folder name)
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deepgen_batch.api import new_prompt_id  # the one prompt-id rule (canonical UUID) for every client
from scripts.comfy_process import ComfyProcess, NotReady  # the one ComfyUI launcher

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-DeepGen"  # fixed: it names /extensions/<name>/ and custom_nodes.<name>
COMFY_DIR = os.environ.get("DEEPGEN_COMFY_DIR", "")
REQUIRE = os.environ.get("DEEPGEN_REQUIRE_INTEGRATION") == "1"
START_TIMEOUT = float(os.environ.get("DEEPGEN_COMFY_START_TIMEOUT", "120"))
DONE_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL_TAG = re.compile(r"^\[(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\] ", re.M)


def _comfy_problem() -> str | None:
    if not COMFY_DIR:
        return ("DEEPGEN_COMFY_DIR is unset: integration tests need a ComfyUI tree (0.3.75 or newer) "
                "(`bash scripts/test.sh` installs one and runs them)")
    if not (Path(COMFY_DIR) / "main.py").is_file():
        return f"DEEPGEN_COMFY_DIR={COMFY_DIR} is not a ComfyUI tree (no main.py); re-run .ci/setup.sh"
    return None


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _gate():
    problem = _comfy_problem()
    if problem:  # an unset dir skips (ERROR under DEEPGEN_REQUIRE_INTEGRATION=1); a wrong one always ERRORs
        (pytest.fail if REQUIRE or COMFY_DIR else pytest.skip)(problem)


@pytest.fixture(scope="session", autouse=True)
def _needs_comfyui():  # session + autouse: runs before any other session fixture (tiny models...)
    _gate()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("DEEPGEN_ARTIFACTS", REPO / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def comfy_dir() -> Path:
    _gate()
    return Path(COMFY_DIR).resolve()


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("comfy_base")
    for sub in ("custom_nodes", "input", "output", "user", "models"):
        (base / sub).mkdir()
    (base / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def comfy_models(comfy_base) -> Path:
    return comfy_base / "models"


@pytest.fixture(scope="session")
def release(comfy_models, tiny) -> Path:
    """The tiny diffusers release under the real release's folder name, written once per session."""
    from deepgen_model import tiny as deepgen_tiny

    root = comfy_models / "deepgen" / "DeepGen-1.0-diffusers"
    if not root.exists():
        deepgen_tiny.write_diffusers_release(root, tiny)
    return root


# ---------------------------------------------------------------- the real server (main.py)

class PromptRejected(Exception):
    """POST /prompt answered an error (validation: HTTP 400 with ``body["node_errors"]``)."""

    def __init__(self, status: int, body):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")
        self.status, self.body = status, body


@dataclasses.dataclass
class WsRun:
    prompt_id: str
    events: list  # (type, data) in arrival order; binary frames as ("binary", {"event": int, "size": n})

    @property
    def types(self) -> list[str]:
        return [t for t, _ in self.events]

    def of(self, kind: str) -> list:
        return [d for t, d in self.events if t == kind]


class ComfyServer:
    PromptRejected = PromptRejected  # for pytest.raises in tests (conftest is not importable by name)

    def __init__(self, proc: subprocess.Popen, url: str, base: Path, log_path: Path):
        self.proc, self.url, self.base, self.log_path = proc, url, base, log_path

    # plain HTTP
    def request(self, method: str, path: str, payload=None, timeout: float = 30):
        """-> (status, content_type, body bytes); HTTP errors are returned, not raised."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def get(self, path: str, timeout: float = 30):
        status, _, body = self.request("GET", path, timeout=timeout)
        assert status == 200, f"GET {path} -> {status}: {body[:500]!r}"
        return json.loads(body)

    def post(self, path: str, payload=None, timeout: float = 30):
        status, _, body = self.request("POST", path, payload if payload is not None else {}, timeout)
        assert status == 200, f"POST {path} -> {status}: {body[:500]!r}"
        return json.loads(body) if body else None

    def object_info(self, node_id: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node_id}" if node_id else ""))

    def interrupt(self):
        self.request("POST", "/interrupt", {})

    # prompts
    def post_prompt(self, prompt: dict, client_id: str | None = None, prompt_id: str | None = None) -> str:
        payload = {"prompt": prompt, "client_id": client_id or "pytest"}
        if prompt_id:
            payload["prompt_id"] = prompt_id
        status, _, body = self.request("POST", "/prompt", payload)
        parsed = json.loads(body) if body.startswith(b"{") else body.decode(errors="replace")
        if status != 200:
            raise PromptRejected(status, parsed)
        return parsed["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120) -> dict:
        """-> the /history entry ({"status": {...}, "outputs": {...}, ...}) once the prompt finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if hist:
                return hist[prompt_id]
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} not done after {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 120, check: bool = True) -> dict:
        """post_prompt + wait; with check, fail unless the prompt succeeded (with its error and the log tail)."""
        entry = self.wait(self.post_prompt(prompt), timeout)
        if check and entry["status"]["status_str"] != "success":
            raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:4000]}\n{self.log_tail()}")
        return entry

    def ws_run(self, prompt: dict, timeout: float = 120) -> WsRun:
        """Queue the prompt and follow /ws until its execution_success/error/interrupted."""
        return asyncio.run(self._ws_run(prompt, timeout))

    async def _ws_run(self, prompt, timeout):
        import aiohttp

        client_id, prompt_id, events = new_prompt_id(), new_prompt_id(), []
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
                await asyncio.to_thread(self.post_prompt, prompt, client_id, prompt_id)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no end event for {prompt_id} after {timeout}s: "
                                           f"{[t for t, _ in events]}\n{self.log_tail()}")
                    msg = await ws.receive(timeout=left)
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        frame = json.loads(msg.data)
                        kind, data = frame["type"], frame.get("data") or {}
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        kind, data = "binary", {"event": int.from_bytes(msg.data[:4], "big"), "size": len(msg.data)}
                    else:
                        raise AssertionError(f"websocket closed ({msg.type}):\n{self.log_tail()}")
                    events.append((kind, data))
                    if kind in DONE_EVENTS and data.get("prompt_id") == prompt_id:
                        return WsRun(prompt_id, events)

    # log
    def log_text(self) -> str:
        """The server log as plain lines: ComfyUI 0.28 colours them and prefixes a "[LEVEL] " tag."""
        return _LEVEL_TAG.sub("", _ANSI.sub("", self.log_path.read_text(errors="replace")))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@pytest.fixture(scope="session")
def comfy_server(comfy_dir, comfy_base, comfy_models, artifacts_dir):
    launcher = ComfyProcess(comfy_dir, comfy_base / "comfyui-server.log", base=comfy_base).start()
    server = ComfyServer(launcher.proc, launcher.url, comfy_base, launcher.log_path)
    try:
        try:
            took = launcher.wait_ready(START_TIMEOUT)
        except NotReady as e:
            pytest.fail(str(e))
        print(f"\nComfyUI ready at {server.url} in {took:.1f}s (pid {launcher.proc.pid})")
        yield server
    finally:
        launcher.stop(15)
        shutil.copyfile(launcher.log_path, artifacts_dir / "comfyui-server.log")


# ---------------------------------------------------------------- in-process (no HTTP)

# ComfyUI's top-level modules that in-process loading imports: anything already imported under these
# names would shadow its tree. ("main" is left out: nothing imports it, and pytest itself imports the
# repo root's __init__.py as a package named after the clone's folder, which may well be "main".)
_COMFY_TOPLEVEL = ("nodes", "execution", "server", "utils", "app", "protocol", "middleware",
                   "api_server", "folder_paths", "comfy", "comfy_extras", "comfy_execution", "comfy_api")


class StubServer:
    """What PromptExecutor, progress handlers and PromptServer.instance users touch."""

    def __init__(self):
        self.client_id = self.last_node_id = self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.events: list = []
        self.on_event = None

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))
        if self.on_event is not None:
            self.on_event(event, data)

    def send_progress_text(self, text, node_id, sid=None):
        self.send_sync("progress_text", {"node": node_id, "text": text}, sid)

    def queue_updated(self):
        pass


class InProcessComfy:
    """ComfyUI loaded into this process, with the pack loaded through ``nodes.load_custom_node``.

    Attributes: nodes / execution / folder_paths (ComfyUI's modules), pack (the pack's module as ComfyUI
    imported it), pack_nodes ({node id: class} ComfyUI registered for the pack, V1 or V3), output_dir, server (StubServer), events (last run's
    server events incl. "progress", "executed", binary previews as int event types).
    """

    def __init__(self, comfy_dir: Path, base: Path, output_dir: Path):
        clash = {m: getattr(sys.modules[m], "__file__", None) for m in _COMFY_TOPLEVEL
                 if m in sys.modules and not str(getattr(sys.modules[m], "__file__", "")).startswith(str(comfy_dir))}
        if clash:
            raise RuntimeError(f"modules shadow ComfyUI's tree, cannot load it in-process: {clash}")
        sys.path.insert(0, str(comfy_dir))
        from comfy.cli_args import args  # ComfyUI's CLI parsing is off here -> defaults; set ours before
        args.cpu = True                   # comfy.model_management is imported (it reads them at import)
        args.disable_api_nodes = True
        args.base_directory = str(base)
        import folder_paths

        folder_paths.set_output_directory(str(output_dir))
        folder_paths.set_temp_directory(str(output_dir / "temp"))
        folder_paths.set_input_directory(str(base / "input"))
        import utils.extra_config  # noqa: F401  (the package, first: nodes.py puts ComfyUI/comfy at sys.path[0],
        import comfy.model_management  # where comfy/utils.py would then shadow it; main.py imports it early too)
        import comfy.utils
        import execution
        import nodes
        import server as comfy_server_module

        self.nodes, self.execution, self.folder_paths, self.output_dir = nodes, execution, folder_paths, output_dir
        self.server = StubServer()
        comfy_server_module.PromptServer.instance = self.server  # for nodes that send_sync/progress_text
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        self._mm = comfy.model_management

        pack_dir = str(base / "custom_nodes" / PACK_NAME)

        async def load():
            await nodes.init_builtin_extra_nodes()
            return await nodes.load_custom_node(pack_dir, set(nodes.NODE_CLASS_MAPPINGS), module_parent="custom_nodes")

        self.pack_loaded = asyncio.run(load())
        self.pack = sys.modules.get(pack_dir.replace(".", "_x_"))
        # V1 and V3 alike: ComfyUI tags every class it registered for the pack with its module
        self.pack_nodes = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items()
                           if getattr(v, "RELATIVE_PYTHON_MODULE", None) == f"custom_nodes.{PACK_NAME}"}
        # main.py's cache sizes: 0.3.75 reads "lru"/"ram", 0.28 also "ram_inactive"; unused keys are harmless
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})

    def _progress_hook(self, value, total, preview, prompt_id=None, node_id=None):
        # what main.py's hijack_progress does, minus the websocket: events + interruption point
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        ctx = get_executing_context()
        node_id = node_id or (ctx.node_id if ctx else None) or self.server.last_node_id
        prompt_id = prompt_id or (ctx.prompt_id if ctx else None) or self.server.last_prompt_id
        self._mm.throw_exception_if_processing_interrupted()
        get_progress_state().update_progress(node_id, value, total, preview)
        self.server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id})

    def declared_nodes(self) -> set[str]:
        """Node ids the pack module itself declares (V1 NODE_CLASS_MAPPINGS or V3 comfy_entrypoint)."""
        if getattr(self.pack, "NODE_CLASS_MAPPINGS", None) is not None:
            return set(self.pack.NODE_CLASS_MAPPINGS)

        async def v3():
            ext = await self.pack.comfy_entrypoint()
            return {cls.GET_SCHEMA().node_id for cls in await ext.get_node_list()}

        return asyncio.run(v3()) if hasattr(self.pack, "comfy_entrypoint") else set()

    @property
    def events(self) -> list:
        return self.server.events

    def interrupt(self):
        """Request an interrupt (call it from an ``on_event`` callback during run)."""
        self.nodes.interrupt_processing(True)

    def validate(self, prompt: dict):
        """-> (valid, error, output_node_ids, node_errors), as POST /prompt validates."""
        return asyncio.run(self.execution.validate_prompt(new_prompt_id(), prompt, None))

    def run(self, prompt: dict, fresh: bool = False, on_event=None, preview_method: str | None = None):
        """Validate + execute like the server's queue. -> (success, outputs, status_messages).

        outputs: ui outputs per node (as /history "outputs"); status_messages: [(event, data)] as in
        /history (a failed validation gives [("validation_error", {"error", "node_errors"})]).
        fresh=True drops every cached output first, so all nodes execute again.
        on_event(event, data) sees every server event as it happens (progress, executing, ...).
        preview_method ("latent2rgb", ...): live previews for this prompt, as the frontend's per-prompt setting
        (0.28 resets args.preview_method from extra_data on every prompt; 0.3.75 reads args only).
        """
        from comfy.cli_args import LatentPreviewMethod, args

        if fresh:
            self.executor.reset()
        self.server.events, self.server.on_event = [], on_event
        prompt_id = new_prompt_id()
        self.server.last_prompt_id = prompt_id
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            return False, {}, [("validation_error", {"error": error, "node_errors": node_errors})]
        extra_data, method = {"client_id": "pytest"}, args.preview_method
        if preview_method:
            extra_data["preview_method"] = preview_method
            args.preview_method = LatentPreviewMethod(preview_method)
        try:
            self.executor.execute(prompt, prompt_id, extra_data, outputs)
        finally:
            self.server.on_event, args.preview_method = None, method
        msgs = self.executor.status_messages
        success = any(event == "execution_success" for event, _ in msgs)
        return success, self.executor.history_result["outputs"], msgs

    def node_output(self, node_id: str) -> list:
        """The last run's outputs of a node, [socket][list item] (e.g. node_output("6")[0][0] is an IMAGE).

        Read from the executor's output cache: its get() is a plain call on 0.3.75, a coroutine on 0.28."""
        entry = self.executor.caches.outputs.get(node_id)
        if inspect.isawaitable(entry):
            entry = asyncio.run(entry)
        assert entry is not None, f"node {node_id} has no outputs from the last run"
        return entry.outputs


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_dir, comfy_base, comfy_models) -> InProcessComfy:
    out = comfy_base / "output-inprocess"  # not the server's output dir: SaveImage counters would race
    out.mkdir(exist_ok=True)
    return InProcessComfy(comfy_dir, comfy_base, out)
