"""bitsandbytes' "pip install kernels" advice stays out of our logs (deepgen_model/__init__.py's filter).

diffusers imports bitsandbytes whenever a model class is imported; on a CPU with AVX512-BF16,
bitsandbytes then warns that it could not load an optional Hub kernel. The warning is only printed on
such CPUs, so the filter itself is also checked with a record of our own, and the installed
bitsandbytes is read (not imported) to check that the filter still names its message and logger.
"""
from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import deepgen_model

REPO = Path(__file__).resolve().parents[2]
NOISE = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
         "`pip install kernels` and the kernels >= 0.11.1")


def test_the_filter_drops_exactly_the_kernels_advice():
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger(deepgen_model.BNB_KERNELS_LOGGER)
    logger.addHandler(handler)
    try:
        logger.warning(NOISE, "No module named 'kernels'")
        logger.warning("some other bitsandbytes warning")
        logging.getLogger("bitsandbytes").warning(NOISE, "from another logger")  # not the one we silence
    finally:
        logger.removeHandler(handler)
    assert seen == ["some other bitsandbytes warning"]


def test_the_filter_matches_the_installed_bitsandbytes():
    """If bitsandbytes rewords or moves the warning, the filter silently stops working: say so here."""
    spec = importlib.util.find_spec("bitsandbytes")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bitsandbytes is not installed")
    ops = Path(next(iter(spec.submodule_search_locations))) / "backends" / "cpu" / "ops.py"
    if not ops.is_file():
        pytest.fail(f"{ops} is gone: check whether bitsandbytes still prints the kernels advice, and update or "
                    "delete the filter in deepgen_model/__init__.py")
    source = ops.read_text(encoding="utf-8")
    assert "logger = logging.getLogger(__name__)" in source  # i.e. the logger bitsandbytes.backends.cpu.ops
    assert f'"{deepgen_model.BNB_KERNELS_NOISE}:' in source, (
        f"{ops} no longer logs {deepgen_model.BNB_KERNELS_NOISE!r}: update or delete the filter in "
        "deepgen_model/__init__.py")


def test_importing_the_engine_and_diffusers_models_prints_no_kernels_advice():
    """What every process of ours does (ComfyUI through nodes/, the demo, bench/): the engine, then
    diffusers' model classes, which import bitsandbytes when it is installed."""
    code = "import deepgen_model.loading; from diffusers import AutoencoderKL, SD3Transformer2DModel"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kernels-community" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
