"""Reliability (issue 7): a soak run through the real HTTP API with the tiny release.

DEEPGEN_SOAK_JOBS jobs (CI: 40; the documented full run: 200), half edits sent by the batch client
(python -m deepgen_batch, as users run it) and half text-to-image prompts queued on POST /prompt at the
same time, so the two kinds interleave in the server's queue. In two equal phases: every job must
succeed, the server's RSS after the second phase must be within 5% of its RSS after the first, and no
temporary file may be left behind (ComfyUI's temp folder, the system temp dir).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image


REPO = Path(__file__).resolve().parents[2]
RELEASE = "DeepGen-1.0-diffusers"
JOBS = int(os.environ.get("DEEPGEN_SOAK_JOBS", "40"))
SIZE, STEPS = 32, 1  # the queue, memory and files are under test, not the pictures
LOADER = {"ckpt_name": RELEASE, "vlm_base": "none", "dit_base": "none", "weight_dtype": "fp32",
          "quantization": "none", "attention": "sdpa"}  # what the batch client sends too: one loaded model


def t2i(i: int) -> dict:
    return {
        "1": {"class_type": "DeepGenCheckpointLoader", "inputs": dict(LOADER)},
        "2": {"class_type": "DeepGenTextEncode",
              "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "prompt": f"soak picture number {i}", "negative_prompt": ""}},
        "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "4": {"class_type": "DeepGenSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "latent": ["3", 0],
                         "seed": 1000 + i, "steps": STEPS, "cfg": 4.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 3]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "soak/t2i"}},
    }


def temp_snapshot(server) -> set[str]:
    comfy_temp = server.base / "temp"
    found = {str(p) for p in comfy_temp.rglob("*")} if comfy_temp.exists() else set()
    return found | {str(p) for p in Path(tempfile.gettempdir()).glob("*deepgen*") if "pytest" not in p.name}


def phase(server, tmp: Path, name: str, n: int) -> float:
    """n jobs (n/2 edits through the batch client, n/2 T2I prompts) -> the server's RSS once all are done."""
    edits = n // 2
    folder = tmp / name
    folder.mkdir()
    g = np.random.default_rng(len(name))
    for i in range(edits):
        w, h = int(g.integers(24, 80)), int(g.integers(24, 80))
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}_{i:03d}.png")
    first = int(name.endswith("2")) * n
    ids = [server.post_prompt(t2i(first + i)) for i in range(n - edits)]  # queued before the client starts
    proc = subprocess.run(
        [sys.executable, "-m", "deepgen_batch", str(folder), "-i", f"soak edit {name}", "-o", str(tmp / f"{name}_out"),
         "-s", server.url, "--steps", str(STEPS), "--max-side", str(SIZE), "--weight-dtype", "fp32",
         "--no-progress", "--seed", str(first)],
        cwd=REPO, capture_output=True, text=True, timeout=60 + 20 * n)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"{edits} ok, 0 failed" in proc.stdout, proc.stdout[-2000:]
    for pid in ids:
        entry = server.wait(pid, timeout=60 + 10 * n)
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        (img,) = entry["outputs"]["6"]["images"]
        with Image.open(server.base / "output" / img["subfolder"] / img["filename"]) as im:
            assert np.asarray(im).std() > 2  # a picture, not a flat/black frame
    rows = [json.loads(line) for line in (tmp / f"{name}_out" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == edits and all(r["status"] == "ok" for r in rows)
    time.sleep(1.0)  # let the worker finish its post-prompt bookkeeping
    return psutil.Process(server.proc.pid).memory_info().rss


def test_soak_mixed_jobs_memory_flat_and_no_temp_files(comfy_server, release, tmp_path):
    before = temp_snapshot(comfy_server)
    half = JOBS // 2
    t0 = time.monotonic()
    rss_first = phase(comfy_server, tmp_path, "phase1", half)
    t1 = time.monotonic()
    rss_second = phase(comfy_server, tmp_path, "phase2", half)
    t2 = time.monotonic()
    growth = (rss_second - rss_first) / rss_first
    print(f"\nsoak: {JOBS} jobs; RSS after {half}: {rss_first / 2**20:.1f} MiB, after {JOBS}: "
          f"{rss_second / 2**20:.1f} MiB ({growth:+.2%}); {(t1 - t0) / half:.2f} s/job then {(t2 - t1) / half:.2f} s/job")
    assert abs(growth) <= 0.05, f"server RSS changed by {growth:+.2%} between job {half} and job {JOBS}"
    leftover = temp_snapshot(comfy_server) - before
    assert not leftover, f"temporary files left behind: {sorted(leftover)[:10]}"
    queue = comfy_server.get("/queue")
    assert not queue["queue_running"] and not queue["queue_pending"]
