"""bitsandbytes' "pip install kernels" advice stays out of our logs, and its per-matmul 8-bit cast notice is
said once (deepgen_model/__init__.py's filters).

diffusers imports bitsandbytes whenever a model class is imported; on a CPU with AVX512-BF16,
bitsandbytes then warns that it could not load an optional Hub kernel. The warning is only printed on
such CPUs, so the filter itself is also checked with a record of our own, and the installed
bitsandbytes is read (not imported) to check that the filter still names its message and logger.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def shown(logger_name: str):
    """The messages a handler on `logger_name` receives (its filters applied) while the block runs."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def test_the_filter_drops_exactly_the_kernels_advice():
    logger = logging.getLogger(deepgen_model.BNB_KERNELS_LOGGER)
    with shown(deepgen_model.BNB_KERNELS_LOGGER) as seen:
        logger.warning(NOISE, "No module named 'kernels'")
        logger.warning("some other bitsandbytes warning")
        logging.getLogger("bitsandbytes").warning(NOISE, "from another logger")  # not the one we silence
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


CAST = "MatMul8bitLt: inputs will be cast from %s to float16 during quantization"


def test_the_8bit_cast_notice_passes_once_and_other_records_always():
    logger = logging.getLogger(deepgen_model.BNB_CAST_LOGGER)
    once = next(f for f in logger.filters if type(f).__name__ == "_OnceBnbCastNotice")
    said, once.said = once.said, False
    try:
        with shown(deepgen_model.BNB_CAST_LOGGER) as seen:
            for _ in range(3):
                logger.warning(CAST, "torch.float32")
                logger.warning("another bitsandbytes warning")
    finally:
        once.said = said or once.said
    assert seen == ["MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization "
                    "(said once per process; DeepGen hides the repeats)"] + ["another bitsandbytes warning"] * 3


def test_the_cast_filter_matches_the_installed_bitsandbytes():
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bitsandbytes is not installed")
    functions = Path(next(iter(spec.submodule_search_locations))) / "autograd" / "_functions.py"
    source = functions.read_text(encoding="utf-8") if functions.is_file() else ""
    assert "logger = logging.getLogger(__name__)" in source and f'"{deepgen_model.BNB_CAST_NOTICE} from' in source, (
        f"{functions} no longer logs {deepgen_model.BNB_CAST_NOTICE!r} on its module logger: update or delete the "
        "filter in deepgen_model/__init__.py")


def test_an_8bit_vlm_on_the_cpu_says_the_cast_once(tiny_layouts):
    """A whole quantized VLM, two forward passes, in a process of its own (the filter is once per process)."""
    pytest.importorskip("bitsandbytes")
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from deepgen_model import vlm_loading\n"
            "vlm, _ = vlm_loading.load_vlm(sys.argv[2], quantization='8bit', device='cpu')\n"
            "with torch.no_grad():\n"
            "    for _ in range(2): vlm(input_ids=torch.tensor([[1, 2, 3]]))\n"
            "print('ran', type(vlm.model.language_model.layers[0].mlp.up_proj).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(tiny_layouts["diffusers"])], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "ran Linear8bitLt" in proc.stdout, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("MatMul8bitLt") == 1, proc.stderr[-3000:]
