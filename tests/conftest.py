"""Shared pytest setup: import paths and the session-wide tiny DeepGen fixtures (tests/deepgen_tiny.py)."""
import sys
from pathlib import Path

import pytest

# Appended, never inserted: in-process ComfyUI tests put ComfyUI's tree first, and it has top-level
# modules (nodes, utils, ...) that must win over anything of ours.
_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS.parent), str(_TESTS)):
    if _p not in sys.path:
        sys.path.append(_p)


@pytest.fixture(scope="session")
def tiny():
    """TinyDeepGen(seed=0). Shared by the whole session: treat it as read-only (build your own to mutate)."""
    import deepgen_tiny

    return deepgen_tiny.build_tiny_components()


@pytest.fixture(scope="session")
def tiny_layouts(tiny, tmp_path_factory):
    """{diffusers, qwen, unipic2, native, native_lora_new, native_lora_legacy} -> Path, written once."""
    import deepgen_tiny

    return deepgen_tiny.build_all_layouts(tmp_path_factory.mktemp("tiny"), tiny)
