"""Install the CPU build of the torch/torchvision pins (.ci/comfy-requirements.txt) into this venv, first.

Run by .ci/setup.sh with the venv's python before the one big pip call, which then finds the pins
satisfied: PyPI's Linux torch==2.13.0 is the CUDA build (torch + ~15 nvidia-* wheels, several GB),
PyTorch's CPU index (https://download.pytorch.org/whl/cpu) has the ~200 MB CPU build. When that index
cannot be reached (machines that see only PyPI, a local wheel directory, a mirror), pip's own sources
are used, after saying what they would fetch — unless that is the CUDA build: then it stops before
downloading anything, says why and how to go on (exit 5; nothing installed), unless
DEEPGEN_ALLOW_CUDA_TORCH=1 accepts it.

    python .ci/install-torch.py [--dry-run]
    env: DEEPGEN_TORCH_INDEX (default: PyTorch's CPU index), DEEPGEN_ALLOW_CUDA_TORCH=1
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

CPU_INDEX = os.environ.get("DEEPGEN_TORCH_INDEX") or "https://download.pytorch.org/whl/cpu"
EXIT_CUDA_ONLY = 5  # run_example.sh passes it on: its own 1-4 mean other things
PINS = [line.strip() for line in (Path(__file__).parent / "comfy-requirements.txt").read_text().splitlines()
        if re.match(r"(torch|torchvision)==", line.strip())]


def reachable(index: str, timeout: float = 8.0) -> bool:
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/torch/", timeout=timeout) as r:
            return getattr(r, "status", 200) == 200
    except (OSError, ValueError):
        return False


def pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, text=True,
                          capture_output=capture)


def describe(report: dict) -> tuple[list[str], list[str]]:
    """(one line per package pip would install, the CUDA packages among them)."""
    lines = []
    for item in report.get("install", []):
        meta, url = item["metadata"], item["download_info"]["url"]
        local = url.startswith("file:")
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path)) if local else None
        size = f", {path.stat().st_size / 1e6:.0f} MB" if path and path.is_file() else ""
        lines.append(f"  {meta['name']} {meta['version']} ({'local file' if local else 'download'}{size}): "
                     f"{urllib.parse.unquote(url.rsplit('/', 1)[-1])}")
    cuda = [i["metadata"]["name"] for i in report.get("install", []) if i["metadata"]["name"].startswith("nvidia-")]
    return lines, cuda


def main(argv=None) -> int:
    dry = "--dry-run" in (argv or sys.argv[1:])
    if reachable(CPU_INDEX):
        print(f"torch: installing the CPU build of {' '.join(PINS)} from {CPU_INDEX} (torch ≈200 MB, no CUDA)",
              flush=True)
        if not dry:
            pip("install", "-q", "--index-url", CPU_INDEX, *PINS)
        return 0
    report = json.loads(pip("install", "--dry-run", "--quiet", "--report", "-", *PINS, capture=True).stdout or "{}")
    lines, cuda = describe(report)
    if cuda and os.environ.get("DEEPGEN_ALLOW_CUDA_TORCH") != "1":
        print(cuda_refusal(cuda), file=sys.stderr, flush=True)
        return EXIT_CUDA_ONLY
    print(f"torch: PyTorch's CPU index ({CPU_INDEX}) is not reachable; pip's own sources give:", flush=True)
    print("\n".join(lines) if lines else "  nothing to install (already there)", flush=True)
    if cuda:
        print(f"torch: the CUDA build ({len(cuda)} CUDA packages, several GB), as DEEPGEN_ALLOW_CUDA_TORCH=1 asks",
              flush=True)
    if not dry and lines:
        pip("install", "-q", *PINS)
    return 0


def cuda_refusal(cuda: list[str]) -> str:
    return (f"torch: STOPPED before downloading anything. PyTorch's CPU index ({CPU_INDEX}) cannot be reached, and "
            f"pip's own sources offer only the CUDA build of {' '.join(PINS)}: {len(cuda)} CUDA packages "
            f"({', '.join(cuda[:3])}, ...), several GB that this CPU-only setup never uses.\n"
            "To go on, either\n"
            "  - offer the CPU build (≈200 MB): DEEPGEN_TORCH_INDEX=<a reachable copy of "
            "https://download.pytorch.org/whl/cpu>, or a +cpu torch wheel in a folder named by PIP_FIND_LINKS; or\n"
            "  - accept the CUDA build: DEEPGEN_ALLOW_CUDA_TORCH=1 (e.g. DEEPGEN_ALLOW_CUDA_TORCH=1 bash "
            "scripts/run_example.sh)\n"
            "and run the same command again.")


if __name__ == "__main__":
    sys.exit(main())
