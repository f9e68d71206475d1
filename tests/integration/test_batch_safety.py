"""deepgen-batch never loses, overwrites or silently drops a picture: against REAL ComfyUI servers.

Two servers of this module's own (own base folders, the session's tiny release shared by symlink), so
they can be killed and restarted without touching the session's comfy_server. The client runs as a
subprocess, as users run it. Scenarios: name collisions (case, extension, same-named sub-folders) and a
damaged PNG; -o = input and other refused outputs; kill -9 + restart of the server mid-batch; its queue
cleared mid-batch; SIGINT + resume on two servers; a manifest line cut by a kill; the client killed
with -9 and resumed; a server that never comes back. Each checks: N inputs -> N distinct outputs (or
error rows), originals byte-identical, the manifest valid JSONL with exactly one final row per input.

Nothing sleeps for a fixed time to race the server: every wait polls a condition under a deadline. To
hold batch prompts in the server's queue (pending) while a test kills the server or clears the queue,
a "blocker" prompt (chained samplers, thousands of steps) keeps the server busy until interrupted.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepgen_batch.api import ComfyClient, new_prompt_id
from deepgen_batch.workflow import Workflow, builtin
from scripts.comfy_process import ComfyProcess

REPO = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--max-side", "64", "--weight-dtype", "fp32", "--no-progress", "--retry-wait", "0.2"]
START_TIMEOUT = float(os.environ.get("DEEPGEN_COMFY_START_TIMEOUT", "120"))


# ---------------------------------------------------------------- a ComfyUI server we may kill

def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll condition() until it returns something truthy (returned) or the deadline passes (fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Server(ComfyProcess):
    """main.py on a fixed port and base folder (scripts/comfy_process.py): start, kill -9, start again (same port,
    same folders, one log)."""

    def __init__(self, comfy_dir: Path, base: Path, name: str):
        super().__init__(comfy_dir, base / f"comfyui-{name}.log", base=base)
        self.base, self.name = base, name

    def launch(self):
        self.start()

    def wait_ready(self) -> float:
        """-> the monotonic time at which the server first answered."""
        super().wait_ready(START_TIMEOUT)
        return time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self):
        if not self.alive():
            self.launch()
            self.wait_ready()

    def kill9(self):
        self.kill()
        for f in self.pid_files:
            f.unlink(missing_ok=True)

    def request(self, method: str, path: str, payload=None, timeout: float = 10):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str):
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def queue(self) -> tuple[list[str], list[str]]:
        q = self.get("/queue")
        return [e[1] for e in q["queue_running"]], [e[1] for e in q["queue_pending"]]



@pytest.fixture(scope="module")
def servers(comfy_dir, comfy_models, release, tmp_path_factory, artifacts_dir):
    made = []
    for name in ("a", "b"):
        base = tmp_path_factory.mktemp(f"batch_safety_{name}")
        for sub in ("custom_nodes", "input", "output", "user"):
            (base / sub).mkdir()
        (base / "custom_nodes" / "ComfyUI-DeepGen").symlink_to(REPO, target_is_directory=True)
        (base / "models").symlink_to(comfy_models, target_is_directory=True)
        made.append(Server(comfy_dir, base, name))
    try:
        for s in made:  # both start at once: half the waiting
            s.launch()
        for s in made:
            s.wait_ready()
        yield made
    finally:
        for s in made:
            s.stop()
            if s.log_path.exists():
                shutil.copyfile(s.log_path, artifacts_dir / f"comfyui-batch-safety-{s.name}.log")


@pytest.fixture
def a(servers):
    servers[0].ensure()
    return servers[0]


@pytest.fixture
def b(servers):
    servers[1].ensure()
    return servers[1]


# ---------------------------------------------------------------- inputs, the client, what must hold

def picture(seed: int, fmt: str = "PNG") -> bytes:
    g = np.random.default_rng(seed)
    w, h = int(g.integers(32, 72)), int(g.integers(32, 72))
    buf = io.BytesIO()
    Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def make_inputs(folder: Path, names: list[str], seed: int = 0) -> dict[str, bytes]:
    files = {}
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = picture(seed * 100 + i, "JPEG" if name.lower().endswith(".jpg") else "PNG")
        path.write_bytes(data)
        files[name] = data
    return files


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """relative path -> sha256 of every file under folder (the output folder ``skip`` left out)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not (skip and skip in p.parents)}


def command(*args) -> list[str]:
    return [sys.executable, "-m", "deepgen_batch", *map(str, args), *FAST]


def batch(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout, proc.stderr[-4000:])
    return proc


def start(*args) -> subprocess.Popen:
    # SIGINT back to its default: a test run started in the background (`cmd &` in a script) hands its children
    # SIGINT ignored, and then Python never raises KeyboardInterrupt, so the SIGINT tests would test nothing
    return subprocess.Popen(command(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    print(out, err[-4000:])
    return out, err


def manifest_rows(path: Path) -> list[dict]:
    """Every line must be one JSON object (valid JSONL: nothing torn)."""
    text = path.read_text(encoding="utf-8")
    assert not text or text.endswith("\n"), "manifest does not end with a complete line"
    rows = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(r, dict) for r in rows)
    return rows


def count_rows(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.endswith("}"))
    except FileNotFoundError:
        return 0


def check_outcome(inputs: dict[str, bytes], src: Path, out: Path, ok: set[str] | None = None,
                  superseded: bool = False) -> dict[str, dict]:
    """The invariants of every scenario -> {input: its row}. ``ok``: inputs that must have succeeded
    (default all); the others must have an error row and no file. ``superseded``: an input may have
    earlier rows (the last one counts), else it must have exactly one row."""
    ok = set(inputs) if ok is None else ok
    for name, data in inputs.items():  # originals byte-identical
        assert (src / name).read_bytes() == data, f"input {name} was modified"
    rows = manifest_rows(out / "manifest.jsonl")
    by_input = {}
    for r in rows:
        assert superseded or r["input"] not in by_input, f"two rows for {r['input']}"
        by_input[r["input"]] = r
    assert set(by_input) == set(inputs)
    outputs = [by_input[n]["output"] for n in sorted(inputs)]
    assert len({o.casefold() for o in outputs}) == len(inputs), outputs  # N inputs -> N distinct names
    for name, r in by_input.items():
        if name in ok:
            assert r["status"] == "ok" and r["outputs"] == [r["output"]], r
            data = (out / r["output"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r["sha256"][0]
            with Image.open(io.BytesIO(data)) as im:
                assert max(im.size) <= 64
        else:
            assert r["status"] == "error" and r["error"] and r["outputs"] == [], r
            assert not (out / r["output"]).exists()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([by_input[n]["output"] for n in ok] + ["manifest.jsonl"]), written  # no strays
    return by_input


def block(server: Server) -> str:
    """Queue a prompt that keeps the server busy (five chained 1000-step samplers) -> its id, once running."""
    client = ComfyClient(server.url)
    image = client.upload(picture(999), "blocker.png", "deepgen-batch-test")
    prompt = Workflow(builtin()).fill(image=image, instruction="block", seed=1, output_prefix="blocker", max_side=64)
    prompt["1"]["inputs"]["weight_dtype"] = "fp32"
    prompt["4"]["inputs"]["steps"] = 1000
    latent = ["4", 0]
    for k in range(5):
        nid = f"b{k}"
        prompt[nid] = {"class_type": "DeepGenSampler", "inputs": {**prompt["4"]["inputs"], "latent": latent}}
        latent = [nid, 0]
    prompt["5"]["inputs"]["samples"] = latent
    prompt_id = new_prompt_id()
    client.queue_prompt(prompt, prompt_id, "pytest-blocker")
    wait_for(lambda: prompt_id in server.queue()[0], 120, "the blocker to run")
    return prompt_id


def pending_batch_prompts(server: Server, blocker: str, n: int) -> list[str]:
    def found():
        running, pending = server.queue()
        assert blocker in running, "the blocker stopped before the scenario could act"
        ours = [p for p in pending if p != blocker]
        return ours if len(ours) >= n else None
    return wait_for(found, 120, f"{n} batch prompts waiting in the queue of {server.name}")


# ---------------------------------------------------------------- the scenarios

def test_colliding_names_and_a_damaged_png(a, b, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", "a_png.png", "a.jpg", "foo.png", "foo.PNG", "sub/x.png", "Sub/x.png"]
    inputs = make_inputs(src, names, seed=1)
    broken = b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 4  # a PNG signature, then junk
    (src / "broken.png").write_bytes(broken)
    inputs["broken.png"] = broken
    proc = batch(src, "-o", out, "-i", "add a red hat", "--recursive", "-s", a.url, "-s", b.url, "--per-server", "1")
    assert proc.returncode == 1, proc.stderr  # the damaged file fails, the rest is done
    rows = check_outcome(inputs, src, out, ok=set(names))
    assert rows["broken.png"]["error"].startswith("broken.png is not a readable image: the PNG")
    assert rows["broken.png"]["prompt_id"] is None  # refused before upload
    assert "FAILED broken.png: broken.png is not a readable image" in proc.stdout
    assert rows["a.jpg"]["output"] == "a_jpg.png" and rows["sub/x.png"]["output"].startswith("sub/")
    assert {r["server"] for r in rows.values() if r["status"] == "ok"} == {a.url, b.url}

    first = snapshot(out)
    again = batch(src, "-o", out, "-i", "add a red hat", "--recursive", "-s", a.url)
    assert again.returncode == 1 and "7 skipped" in again.stdout  # only the broken file is tried again
    assert snapshot(out)["manifest.jsonl"] != first["manifest.jsonl"]
    assert {k: v for k, v in snapshot(out).items() if k != "manifest.jsonl"} == \
        {k: v for k, v in first.items() if k != "manifest.jsonl"}  # same names, nothing rewritten


def test_refused_outputs_touch_nothing(a, tmp_path):
    src = tmp_path / "in"
    make_inputs(src, ["a.png", "b.png"], seed=2)
    before = snapshot(tmp_path)
    for out, message in ((src, "is the input folder"), (tmp_path, "contains the input folder")):
        proc = batch(src, "-o", out, "-i", "x", "-s", a.url)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert snapshot(tmp_path) == before  # nothing written, nothing changed

    out = tmp_path / "out"  # a file the batch did not make sits where a result would go
    out.mkdir()
    (out / "b.png").write_bytes(b"my own picture")
    proc = batch(src, "-o", out, "-i", "x", "-s", a.url)
    assert proc.returncode == 2 and "not made by deepgen-batch" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "b.png").read_bytes() == b"my own picture" and not (out / "manifest.jsonl").exists()
    assert a.queue() == ([], [])  # refused before anything was queued


def test_server_killed_and_restarted_mid_batch(a, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_inputs(src, [f"k{i}.png" for i in range(3)], seed=3)
    blocker = block(a)
    proc = start(src, "-o", out, "-i", "add snow", "-s", a.url, "--per-server", "2")
    try:
        lost = pending_batch_prompts(a, blocker, 2)
        a.kill9()  # the two queued prompts die with the server
        a.launch()
        ready = a.wait_ready()

        def requeued():
            running, pending = a.queue()
            return (running or pending) and time.monotonic()
        again = wait_for(requeued, 60, "the client to queue its prompts again on the restarted server")
        print(f"re-queued {again - ready:.2f} s after the restarted server answered")
        assert again - ready < 10, f"re-queued {again - ready:.1f} s after the server was back"
        out_text, err = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rows = check_outcome(inputs, src, out)
    assert not {r["prompt_id"] for r in rows.values()} & set(lost)
    assert sorted(r["attempts"] for r in rows.values())[-2:] == [2, 2]  # the lost ones: one retry each
    assert err.count("queueing k") >= 2 and "no longer has the prompt" in err
    for r in rows.values():  # each result came from the restarted server's run of it
        assert a.get(f"/history/{r['prompt_id']}")[r["prompt_id"]]["status"]["status_str"] == "success"


def test_queue_cleared_mid_batch(b, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_inputs(src, [f"q{i}.png" for i in range(3)], seed=4)
    blocker = block(b)
    proc = start(src, "-o", out, "-i", "add fog", "-s", b.url, "--per-server", "2")
    try:
        cleared = pending_batch_prompts(b, blocker, 2)
        assert b.request("POST", "/queue", {"clear": True})[0] == 200  # the user's "clear queue"
        t_clear = time.monotonic()

        def requeued():
            running, pending = b.queue()
            new = [p for p in pending if p != blocker and p not in cleared]
            return len(new) >= 2 and time.monotonic()
        again = wait_for(requeued, 60, "the client to queue the cleared prompts again")
        print(f"re-queued {again - t_clear:.2f} s after the queue was cleared")
        assert again - t_clear < 10, f"re-queued {again - t_clear:.1f} s after the queue was cleared"
        assert b.request("POST", "/interrupt", {"prompt_id": blocker})[0] == 200
        out_text, err = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rows = check_outcome(inputs, src, out)
    assert not {r["prompt_id"] for r in rows.values()} & set(cleared)
    assert sorted(r["attempts"] for r in rows.values()) == [1, 2, 2]


def test_sigint_then_resume_on_two_servers(a, b, tmp_path):
    src = tmp_path / "in"
    out = src / "edited"  # a sub-folder of the input folder: allowed, and never scanned as input
    inputs = make_inputs(src, [f"s{i}.png" for i in range(6)], seed=5)
    args = [src, "-o", out, "-i", "turn it upside down", "--recursive", "-s", a.url, "-s", b.url,
            "--per-server", "1"]
    proc = start(*args)
    try:
        wait_for(lambda: count_rows(out / "manifest.jsonl") >= 2 or proc.poll() is not None, 240,
                 "two finished items")
        proc.send_signal(signal.SIGINT)
        _, err = finish(proc, 60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    first = manifest_rows(out / "manifest.jsonl")
    assert 2 <= len(first) < 6 and all(r["status"] == "ok" for r in first)
    for s in (a, b):  # the stopped run took its prompts off the servers
        wait_for(lambda: s.queue() == ([], []), 30, f"{s.name}'s queue to empty")
    kept = {r["output"]: (out / r["output"]).stat().st_mtime_ns for r in first}

    again = batch(*args)
    assert again.returncode == 0, again.stderr
    assert f"{len(first)} skipped" in again.stdout
    check_outcome(inputs, src, out)
    assert {o: (out / o).stat().st_mtime_ns for o in kept} == kept  # finished items were not redone
    assert set(snapshot(src, skip=out)) == set(inputs)  # nothing written into the input tree but edited/


def test_manifest_line_cut_by_a_kill(a, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_inputs(src, [f"t{i}.png" for i in range(3)], seed=6)
    args = [src, "-o", out, "-i", "make it blue", "-s", a.url]
    assert batch(*args).returncode == 0
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    torn = json.loads(lines[-1])
    # the state a kill during the last row's write leaves (the client writes the result to a temp file,
    # then the row, then renames the temp file): a temp file, half a line, no result under its name
    (out / torn["output"]).rename(out / f".{torn['output']}.x1y2z3.deepgen-part")
    manifest.write_text("".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])
    proc = batch(*args)
    assert proc.returncode == 0, proc.stderr
    assert "dropping 1 unreadable line" in proc.stderr and "1 ok, 0 failed, 2 skipped" in proc.stdout
    rows = check_outcome(inputs, src, out)  # also: the temp file is gone, the manifest is valid again
    assert rows[torn["input"]]["prompt_id"] != torn["prompt_id"]


def test_client_killed_then_resumed(b, tmp_path):
    """A real kill -9 of the client, wherever it lands (download, temp file, row, rename): the resumed
    run ends with every invariant, and no temp file is left behind."""
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_inputs(src, [f"c{i}.png" for i in range(4)], seed=8)
    args = [src, "-o", out, "-i", "make it green", "-s", b.url, "--per-server", "1"]
    proc = start(*args)
    try:
        wait_for(lambda: count_rows(out / "manifest.jsonl") >= 1 or proc.poll() is not None, 240, "one finished item")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    again = batch(*args)
    assert again.returncode == 0, again.stderr
    # (a kill between a row and its file's rename leaves an ok row without the file: redone, a 2nd row)
    check_outcome(inputs, src, out, superseded=True)


def test_server_that_never_comes_back(a, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_inputs(src, [f"n{i}.png" for i in range(4)], seed=7)
    proc = start(src, "-o", out, "-i", "add rain", "-s", a.url, "--per-server", "1", "--server-wait", "3")
    try:
        wait_for(lambda: count_rows(out / "manifest.jsonl") >= 1 or proc.poll() is not None, 240, "one finished item")
        a.kill9()
        out_text, err = finish(proc, 120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    done = {r["input"] for r in manifest_rows(out / "manifest.jsonl") if r["status"] == "ok"}
    assert 1 <= len(done) < 4
    rows = check_outcome(inputs, src, out, ok=done)  # what was done is kept; the rest has error rows
    for name in set(inputs) - done:
        assert a.url in rows[name]["error"], rows[name]["error"]  # names the server that went away
    assert f"{4 - len(done)} failed" in out_text


# ---------------------------------------------------------------- a disk that fails; a folder that grows

def faulty_batch(folder: Path, mode: str, after: int, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The client with tests/disk_faults.py's disk under ``folder`` (full after ``after`` results or rows,
    or read-only)."""
    cmd = [sys.executable, str(REPO / "tests" / "disk_faults.py"), str(folder), mode, str(after), "--",
           *map(str, args), *FAST]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout, proc.stderr[-4000:])
    return proc


def history_ids(server: Server) -> set[str]:
    return set(server.get("/history"))


@pytest.mark.parametrize("mode", ["full-result", "full-row"])
def test_disk_full_mid_run_keeps_every_finished_result(a, tmp_path, mode):
    """The disk fills up after two results (the third result's data, or its manifest row, cannot be
    written): the run stops queueing, cancels what it had on the server, keeps the two, says so, exits 4;
    the same command after space is freed does the rest with nothing lost."""
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_inputs(src, [f"f{i}.png" for i in range(5)], seed=9)
    args = [src, "-o", out, "-i", "make it snowy", "-s", a.url, "--per-server", "2"]
    proc = faulty_batch(out, mode, 2, *args)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
    assert "the 2 result(s) finished before it are kept" in proc.stderr and "run the same command again" in proc.stderr
    assert "2 ok, 0 failed" in proc.stdout
    first = manifest_rows(out / "manifest.jsonl")  # valid JSONL: the cut row was taken back
    assert len(first) == 2 and all(r["status"] == "ok" for r in first)
    assert sorted(p.name for p in out.iterdir()) == sorted([r["output"] for r in first] + ["manifest.jsonl"])
    wait_for(lambda: a.queue() == ([], []), 30, "the stopped run's prompts to leave the queue")
    kept = {r["output"]: (out / r["output"]).stat().st_mtime_ns for r in first}

    again = batch(*args)
    assert again.returncode == 0, again.stderr
    assert "3 ok, 0 failed, 2 skipped" in again.stdout
    check_outcome(inputs, src, out)
    assert {o: (out / o).stat().st_mtime_ns for o in kept} == kept  # the finished ones were not redone


def test_unwritable_output_or_manifest_is_refused_before_queueing(a, tmp_path):
    src, out, shelf = tmp_path / "in", tmp_path / "out", tmp_path / "shelf"
    make_inputs(src, ["a.png", "b.png"], seed=10)
    out.mkdir()
    shelf.mkdir()
    before = history_ids(a)
    args = [src, "-o", out, "-i", "x", "-s", a.url]
    proc = faulty_batch(out, "read-only", 0, *args)  # a read-only output folder
    assert proc.returncode == 4 and f"could not write {out}: Read-only file system" in proc.stderr, proc.stderr
    assert "Nothing was queued" in proc.stderr and "Traceback" not in proc.stderr
    proc = faulty_batch(shelf, "read-only", 0, *args, "--manifest", shelf / "manifest.jsonl")  # --manifest read-only
    assert proc.returncode == 4 and f"could not write {shelf}" in proc.stderr, proc.stderr
    proc = batch(*args, "--manifest", out / "b.png")  # the manifest where a result goes
    assert proc.returncode == 2 and f"--manifest {out / 'b.png'} is where the result of b.png goes" in proc.stderr
    assert history_ids(a) == before and a.queue() == ([], [])  # nothing reached the server
    assert list(out.iterdir()) == [] and list(shelf.iterdir()) == []


def test_added_inputs_never_replace_finished_results(a, tmp_path):
    """Seeds come from each item's name: files added before and between the finished ones change no seed,
    so the re-run does only the new files. A finished result is only redone when asked (--overwrite)."""
    from deepgen_batch.plan import derive_seed

    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_inputs(src, ["b.png", "d.png"], seed=11)
    args = [src, "-o", out, "-i", "add a rainbow", "-s", a.url]
    assert batch(*args).returncode == 0
    done = {r["input"]: r for r in manifest_rows(out / "manifest.jsonl")}
    assert {n: r["seed"] for n, r in done.items()} == {n: derive_seed(0, n) for n in done}
    pictures = snapshot(out)

    inputs.update(make_inputs(src, ["a.png", "c.png"], seed=12))  # sorted before and between the others
    again = batch(*args)
    assert again.returncode == 0 and "2 ok, 0 failed, 2 skipped" in again.stdout, again.stderr
    rows = check_outcome(inputs, src, out)
    assert {n: snapshot(out)[done[n]["output"]] for n in done} == {n: pictures[done[n]["output"]] for n in done}
    assert all(rows[n]["seed"] == derive_seed(0, n) for n in inputs)

    other = batch(*args, "--seed", "5")  # other seeds would make other pictures: kept unless asked
    assert other.returncode == 0 and "nothing to do" in other.stdout
    assert "4 finished item(s) would be made differently now" in other.stderr and "--overwrite" in other.stderr
    redo = batch(*args, "--seed", "5", "--overwrite", "--limit", "1")
    assert redo.returncode == 0 and "1 ok, 0 failed" in redo.stdout
    rows = check_outcome(inputs, src, out, superseded=True)
    assert rows["a.png"]["seed"] == derive_seed(5, "a.png") and rows["b.png"]["seed"] == derive_seed(0, "b.png")


def test_long_names_and_backslashes_in_names(a, tmp_path):
    """A 255-byte file name (its result name would not fit next to its temp name) and a Linux file named
    a\\b.png beside a/b.png: every file edited from its own bytes, a second run skips them all."""
    src, out = tmp_path / "in", tmp_path / "out"
    long = "\u00e9" + "x" * 249 + ".png"  # 255 bytes in UTF-8
    inputs = make_inputs(src, [long, "a\\b.png", "a/b.png"], seed=13)
    args = [src, "-o", out, "-i", "make it pink", "--recursive", "-s", a.url]
    proc = batch(*args)
    assert proc.returncode == 0, proc.stderr
    rows = check_outcome(inputs, src, out)
    assert len(rows[long]["output"].encode()) <= 200 and rows[long]["output"].startswith("\u00e9xxx")
    assert rows["a\\b.png"]["output"] == "a\\b.png" and rows["a/b.png"]["output"] == "a/b.png"
    for name, data in inputs.items():  # each result was made from its own file
        prompt = a.get(f"/history/{rows[name]['prompt_id']}")[rows[name]["prompt_id"]]["prompt"][2]
        assert prompt["2"]["inputs"]["image"] == f"deepgen-batch/{hashlib.sha256(data).hexdigest()[:24]}.png"
    again = batch(*args)
    assert again.returncode == 0 and "nothing to do: all 3 items are done" in again.stdout, again.stderr
    assert "Traceback" not in again.stderr
