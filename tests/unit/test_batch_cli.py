"""deepgen_batch runs without torch, numpy, PIL, ComfyUI or the engine; CLI exit statuses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deepgen_batch import cli
from deepgen_batch.plan import derive_seed

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "PIL", "comfy", "comfy_api", "comfy_execution", "folder_paths", "nodes", "execution",
         "deepgen_model", "transformers", "diffusers", "aiohttp", "requests")

CHECK = """
import importlib, pkgutil, sys, json
import deepgen_batch
for m in pkgutil.iter_modules(deepgen_batch.__path__):
    if m.name != "__main__":
        importlib.import_module("deepgen_batch." + m.name)
from deepgen_batch import cli
from deepgen_batch.plan import derive_seed
from deepgen_batch.progress import Progress
Progress(2, 2).close()
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def test_no_heavy_imports(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    proc = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                           "-i", "edit", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    loaded = [m for m in result["modules"] if m.split(".")[0] in HEAVY]
    assert not loaded, loaded
    assert "deepgen_batch.runner" in result["modules"] and "tqdm" in result["modules"]


def test_dry_run_prints_the_plan(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff")
    assert cli.main([str(tmp_path), "-o", str(tmp_path / "o"), "-i", "add fog", "--seed", "5", "--steps", "8",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = [json.loads(line) for line in out.splitlines() if line.startswith('{"input"')]
    assert [(p["input"], p["seed"], p["output"]) for p in plan] == [("a.png", derive_seed(5, "a.png"), "a.png"),
                                                                     ("b.jpg", derive_seed(5, "b.jpg"), "b.png")]
    assert '"steps": 8' in out and '"prompt": "add fog"' in out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main([str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "--instruction" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "-i", "x"]) == 2
    (tmp_path / "w.json").write_text('{"nodes": []}')
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert cli.main([str(tmp_path), "-o", str(tmp_path / "o"), "-i", "x", "--workflow", str(tmp_path / "w.json")]) == 2
    assert "Export (API)" in capsys.readouterr().err


def test_no_server_exits_3(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main([str(tmp_path), "-o", str(tmp_path / "o"), "-i", "x", "-s", f"127.0.0.1:{port}"]) == 3
    err = capsys.readouterr().err
    assert f"skipping http://127.0.0.1:{port}" in err and "no ComfyUI server reachable" in err


def _png(folder, *names):
    from PIL import Image

    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / name)


def test_output_folder_rules(tmp_path, capsys):
    src = tmp_path / "photos"
    _png(src, "a.png", "b.png", "edited/old.png")
    (tmp_path / "m.csv").write_text("filename,instruction\nedited/old.png,x\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert cli.main([str(src), "-o", str(src), "-i", "x"]) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert cli.main([str(src), "-o", str(tmp_path), "-i", "x"]) == 2
    assert "contains the input folder" in capsys.readouterr().err
    assert cli.main([str(src), "-m", str(tmp_path / "m.csv"), "-o", str(src / "edited"), "-i", "x"]) == 2
    assert "edited/old.png is inside the output folder" in capsys.readouterr().err
    assert cli.main([str(src), "-o", str(src / "x"), "-i", "x", "--manifest", str(src / "m.jsonl")]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    # a sub-folder of the input folder is fine, and the scan leaves it out
    assert cli.main([str(src), "-o", str(src / "edited"), "-i", "x", "--recursive", "--dry-run"]) == 0
    plan = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"input"')]
    assert [p["input"] for p in plan] == ["a.png", "b.png"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing touched


def test_foreign_files_stop_the_run_unless_overwrite(tmp_path, capsys):
    _png(tmp_path / "in", "a.png", "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"someone's picture")
    args = [str(tmp_path / "in"), "-o", str(out), "-i", "x", "-s", "127.0.0.1:9"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{out / 'b.png'} (result of b.png)" in err and "--overwrite" in err
    assert (out / "b.png").read_bytes() == b"someone's picture" and sorted(os.listdir(out)) == ["b.png"]
    assert cli.main(args + ["--overwrite"]) == 3  # past the check (then: no server at port 9)
