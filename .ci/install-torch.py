"""Install the CPU build of the torch/torchvision pins (.ci/comfy-requirements.txt) into this venv, first.

Run by .ci/setup.sh with the venv's python before the one big pip call, which then finds the pins
satisfied: PyPI's Linux torch==2.13.0 is the CUDA build (torch + ~15 nvidia-* wheels, several GB),
PyTorch's CPU index (https://download.pytorch.org/whl/cpu) has the ~200 MB CPU build. When that index
cannot be reached (machines that see only PyPI, a local wheel directory, a mirror), pip's own sources
are used, after saying what they would fetch: a CPU wheel, or a warning naming the CUDA packages.

    python .ci/install-torch.py [--dry-run]      env: DEEPGEN_TORCH_INDEX (default: PyTorch's CPU index)
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
    print(f"torch: PyTorch's CPU index ({CPU_INDEX}) is not reachable; pip's own sources give:", flush=True)
    print("\n".join(lines) if lines else "  nothing to install (already there)", flush=True)
    if cuda:
        print(f"torch: WARNING: that is the CUDA build ({len(cuda)} CUDA packages: {', '.join(cuda[:4])}, ...; "
              "several GB). For the ≈200 MB CPU build set DEEPGEN_TORCH_INDEX to a reachable copy of "
              "https://download.pytorch.org/whl/cpu, or put a +cpu wheel where pip finds it (PIP_FIND_LINKS).",
              file=sys.stderr, flush=True)
    if not dry and lines:
        pip("install", "-q", *PINS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
