"""deepgen-batch gives the same pictures on different ComfyUI versions: a check run by hand.

Not a pytest module (CI can install only one ComfyUI). Give one ``--comfy TREE=PYTHON`` per ComfyUI, PYTHON
being the venv that .ci/setup.sh prepared for that tree (``DEEPGEN_COMFY_DIR=TREE bash .ci/setup.sh``):

    $PY tests/compat_batch_parity.py \\
        --comfy ~/.cache/comfyui-deepgen/ComfyUI=~/.cache/comfyui-deepgen/venv/bin/python \\
        --comfy /path/to/ComfyUI-0.28.0=~/.cache/deepgen-028/venv/bin/python

Each ComfyUI in turn serves the pack with the same tiny release (deepgen_model/tiny.py); `python -m
deepgen_batch` edits the same folder of images with the same instruction and seeds on each; the results
must agree pixel for pixel. Prints one line per tree and the comparison; exit status 0 only when identical.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # run as a script: deepgen_model (the tiny release) is not on the path
from scripts.comfy_process import ComfyProcess, NotReady  # noqa: E402  (the one ComfyUI launcher)
BATCH = ["-i", "make it look like a watercolour painting", "--seed", "1000", "--steps", "2", "--max-side", "64",
         "--weight-dtype", "fp32", "--no-progress"]


def make_images(folder: Path, n: int = 6) -> None:
    folder.mkdir(parents=True)
    g = np.random.default_rng(7)
    for i in range(n):
        w, h = int(g.integers(40, 90)), int(g.integers(40, 90))
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")


def run_on(tree: Path, python: str, work: Path, models: Path, images: Path) -> tuple[str, Path, float]:
    """Start ComfyUI `tree`, run deepgen-batch on `images` against it, stop it. -> (version, output dir, seconds)."""
    version = (tree / "comfyui_version.py").read_text().split('"')[1]
    base = work / f"base-{version}"
    for sub in ("custom_nodes", "input", "output", "user"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-DeepGen").symlink_to(REPO, target_is_directory=True)
    (base / "models").symlink_to(models, target_is_directory=True)
    server = ComfyProcess(tree, work / f"server-{version}.log", python=python, base=base).start()
    try:
        try:
            server.wait_ready(180)
        except NotReady as e:
            raise SystemExit(f"ComfyUI {version} did not start: {e}") from None
        out, t0 = work / f"out-{version}", time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "deepgen_batch", str(images), "-o", str(out),
                               "-s", server.url, *BATCH], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"deepgen-batch failed on ComfyUI {version}:\n{proc.stdout}\n{proc.stderr[-3000:]}")
        return version, out, time.monotonic() - t0
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfy", action="append", required=True, metavar="TREE=PYTHON")
    p.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, instead of a temporary one")
    args = p.parse_args()
    if len(args.comfy) < 2:
        p.error("give at least two --comfy TREE=PYTHON")
    from deepgen_model import tiny as deepgen_tiny

    work = args.keep or Path(tempfile.mkdtemp(prefix="deepgen-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    models, images = work / "models", work / "in"
    release = models / "deepgen" / "DeepGen-1.0-diffusers"
    deepgen_tiny.write_diffusers_release(release, deepgen_tiny.build_tiny_components())
    make_images(images)
    names = sorted(q.name for q in images.iterdir())
    runs = []
    for spec in args.comfy:
        tree, _, python = spec.partition("=")
        tree, python = Path(os.path.expanduser(tree)).resolve(), os.path.expanduser(python or sys.executable)
        version, out, seconds = run_on(tree, python, work, models, images)
        got = sorted(q.name for q in out.glob("*.png"))
        print(f"ComfyUI {version}: {len(got)}/{len(names)} edited in {seconds:.1f}s -> {out}")
        if got != names:
            print(f"  missing: {sorted(set(names) - set(got))}")
            return 1
        runs.append((version, out))
    ref_version, ref = runs[0]
    same = True
    for version, out in runs[1:]:
        for name in names:
            a = np.asarray(Image.open(ref / name).convert("RGB"))
            b = np.asarray(Image.open(out / name).convert("RGB"))
            diff = int(np.abs(a.astype(int) - b.astype(int)).max()) if a.shape == b.shape else None
            same &= diff == 0
            print(f"  {name} {a.shape[1]}x{a.shape[0]}: {ref_version} vs {version}: "
                  f"{'pixel-identical' if diff == 0 else f'DIFFERENT (max abs diff {diff})'}")
    print("IDENTICAL" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
