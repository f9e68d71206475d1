"""deepgen-batch (python -m deepgen_batch) end to end against REAL ComfyUI servers with the tiny release.

The client runs as a subprocess (as users run it), 2 steps at max_side 64 to stay fast on CPU:
  - 10 items from a CSV mapping, one a damaged TIFF (passes the client's signature check, fails in the
    server's LoadImage) -> 9 outputs + 1 error row naming the file, exit status 1;
  - a run stopped by SIGINT after a few items, then resumed: finished items are not redone;
  - two servers (a second ComfyUI started here) share the work: both appear in the manifest.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepgen_batch.plan import derive_seed
from scripts.comfy_process import ComfyProcess


REPO = Path(__file__).resolve().parents[2]
RELEASE = "DeepGen-1.0-diffusers"
FAST = ["--steps", "2", "--max-side", "64", "--weight-dtype", "fp32", "--no-progress", "--retry-wait", "0.2"]


def make_images(folder: Path, n: int, seed: int, broken: str | None = None) -> list[str]:
    folder.mkdir(parents=True)
    g = np.random.default_rng(seed)
    names = [f"img_{i:02d}.png" for i in range(n)]
    for name in names:
        if name == broken:  # a TIFF signature, then junk: the client checks only TIFF's signature
            (folder / name).write_bytes(b"II*\x00" + b"this is not image data" * 4)
        else:
            w, h = int(g.integers(32, 72)), int(g.integers(32, 72))
            Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return names


def batch(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "deepgen_batch", *map(str, args), *FAST], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    print(proc.stdout, proc.stderr[-3000:])
    return proc


def manifest_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ten_items_one_broken(comfy_server, release, tmp_path):
    names = make_images(tmp_path / "in", 10, seed=5, broken="img_07.png")
    with open(tmp_path / "edits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "instruction", "seed"])
        for i, name in enumerate(names):
            w.writerow([name, f"make it look like painting number {i}", 2**63 + 5 if i == 3 else ""])
    out = tmp_path / "out"
    proc = batch(tmp_path / "in", "-m", tmp_path / "edits.csv", "-o", out, "-s", comfy_server.url, "--seed", "1000")
    assert proc.returncode == 1, proc.stderr  # one item failed
    assert "9 ok, 1 failed" in proc.stdout
    assert "no websocket" not in proc.stderr  # progress came over /ws, not by polling

    rows = manifest_rows(out / "manifest.jsonl")
    assert sorted(r["input"] for r in rows) == names
    bad = [r for r in rows if r["status"] != "ok"]
    assert [r["input"] for r in bad] == ["img_07.png"]
    assert bad[0]["error"].startswith("img_07.png is not a readable image: the server could not decode it (")
    assert bad[0]["outputs"] == [] and bad[0]["prompt_id"] and not (out / bad[0]["output"]).exists()
    assert "FAILED img_07.png: img_07.png is not a readable image" in proc.stdout
    by_name = {r["input"]: r for r in rows}
    for i, name in enumerate(names):
        r = by_name[name]
        assert r["seed"] == (2**63 + 5 if i == 3 else derive_seed(1000, name))  # mapping seed, else from the name
        assert r["instruction"] == f"make it look like painting number {i}" and r["server"] == comfy_server.url
        if name != "img_07.png":
            assert r["status"] == "ok" and r["output"] == name and r["seconds"] > 0
            with Image.open(out / r["output"]) as im:  # the server's PNG, downloaded through /view
                assert im.width % 16 == 0 and im.height % 16 == 0 and max(im.size) <= 64
                assert np.asarray(im.convert("RGB")).std() > 1
    assert sorted(p.name for p in out.glob("*.png")) == sorted(n for n in names if n != "img_07.png")
    hist = comfy_server.get(f"/history/{by_name['img_00.png']['prompt_id']}")
    graph = next(iter(hist.values()))["prompt"][2]
    enc = next(n for n in graph.values() if n["class_type"] == "DeepGenEditEncode")["inputs"]
    assert enc["prompt"] == "make it look like painting number 0" and enc["max_side"] == 64
    assert next(n for n in graph.values() if n["class_type"] == "DeepGenSampler")["inputs"]["steps"] == 2


def test_interrupted_run_resumes_without_redoing(comfy_server, release, tmp_path):
    names = make_images(tmp_path / "in", 8, seed=6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deepgen_batch", str(tmp_path / "in"), "-o", str(out), "-i", "turn it upside down",
           "-s", comfy_server.url, "--per-server", "1", *FAST]
    # SIGINT at its default even when this test run was started in the background (which ignores SIGINT)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while not (manifest.exists() and len(manifest_rows(manifest)) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    first = manifest_rows(manifest)
    assert 3 <= len(first) < 8 and all(r["status"] == "ok" for r in first)
    mtimes = {r["input"]: (out / r["output"]).stat().st_mtime_ns for r in first}
    deadline = time.monotonic() + 10  # the stopped run cancelled what it had queued
    while True:
        q = comfy_server.get("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            break
        assert time.monotonic() < deadline, q
        time.sleep(0.2)

    again = batch(tmp_path / "in", "-o", out, "-i", "turn it upside down", "-s", comfy_server.url)
    assert again.returncode == 0, again.stderr
    assert f"{len(first)} skipped" in again.stdout
    rows = manifest_rows(manifest)
    assert sorted(r["input"] for r in rows) == names  # every item exactly once: nothing redone
    assert all(r["status"] == "ok" for r in rows)
    assert {r["input"]: (out / r["output"]).stat().st_mtime_ns for r in first} == mtimes
    assert sorted(p.name for p in out.glob("*.png")) == names

    third = batch(tmp_path / "in", "-o", out, "-i", "turn it upside down", "-s", comfy_server.url)
    assert third.returncode == 0 and "nothing to do" in third.stdout
    changed = batch(tmp_path / "in", "-o", out, "-i", "turn it upside down", "-s", comfy_server.url, "--limit", "1",
                    "--seed", "7")  # other seeds would make other pictures: the finished ones are kept ...
    assert changed.returncode == 0 and "nothing to do" in changed.stdout and "--overwrite" in changed.stderr
    redo = batch(tmp_path / "in", "-o", out, "-i", "turn it upside down", "-s", comfy_server.url, "--limit", "1",
                 "--seed", "7", "--overwrite")  # ... unless asked
    assert redo.returncode == 0 and "1 ok" in redo.stdout and len(manifest_rows(manifest)) == len(names) + 1


# ---------------------------------------------------------------- a second server

@pytest.fixture(scope="module")
def second_server(comfy_server, comfy_dir, comfy_models, release, tmp_path_factory, artifacts_dir):
    """Another real ComfyUI (own base dir, so SaveImage counters never race; models shared by symlink),
    started like conftest's comfy_server."""
    base = tmp_path_factory.mktemp("comfy_base_2")
    for sub in ("custom_nodes", "input", "output", "user"):
        (base / sub).mkdir()
    (base / "custom_nodes" / "ComfyUI-DeepGen").symlink_to(REPO, target_is_directory=True)
    (base / "models").symlink_to(comfy_models, target_is_directory=True)
    launcher = ComfyProcess(comfy_dir, base / "comfyui-server-2.log", base=base).start()
    try:
        launcher.wait_ready(float(os.environ.get("DEEPGEN_COMFY_START_TIMEOUT", "120")))
        yield type(comfy_server)(launcher.proc, launcher.url, base, launcher.log_path)
    finally:
        launcher.stop(15)
        shutil.copyfile(launcher.log_path, artifacts_dir / "comfyui-server-2.log")


def test_two_servers_share_the_work(comfy_server, second_server, tmp_path):
    names = make_images(tmp_path / "in", 6, seed=7)
    out = tmp_path / "out"
    proc = batch(tmp_path / "in", "-o", out, "-i", "add a red hat", "-s", comfy_server.url, "-s", second_server.url,
                 "--per-server", "1")
    assert proc.returncode == 0, proc.stderr
    rows = manifest_rows(out / "manifest.jsonl")
    assert sorted(r["input"] for r in rows) == names and all(r["status"] == "ok" for r in rows)
    servers = [r["server"] for r in rows]
    assert set(servers) == {comfy_server.url, second_server.url}, servers
    for url, srv in ((comfy_server.url, comfy_server), (second_server.url, second_server)):
        for r in rows:  # each prompt ran where the manifest says
            if r["server"] == url:
                assert srv.get(f"/history/{r['prompt_id']}"), (url, r)
    assert sorted(p.name for p in out.glob("*.png")) == names
