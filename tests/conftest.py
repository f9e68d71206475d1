"""Shared pytest setup: import paths and the session-wide tiny DeepGen fixtures (deepgen_model/tiny.py)."""
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
    from deepgen_model import tiny as deepgen_tiny

    return deepgen_tiny.build_tiny_components()


@pytest.fixture(scope="session")
def tiny_layouts(tiny, tmp_path_factory):
    """{diffusers, qwen, unipic2, native, native_lora_new, native_lora_legacy} -> Path, written once."""
    from deepgen_model import tiny as deepgen_tiny

    return deepgen_tiny.build_all_layouts(tmp_path_factory.mktemp("tiny"), tiny)


@pytest.fixture(autouse=True)
def _no_leaked_default_dtype(request):
    """Fail the test that leaves torch's process-wide default dtype changed (diffusers' and transformers
    4.x's from_pretrained set it and restore it only on success): every later module build would
    silently change dtype. Reported here, at the leaking test, not at a later flaky one."""
    torch = sys.modules.get("torch")
    before = torch.get_default_dtype() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_default_dtype() != before:
        leaked = torch.get_default_dtype()
        torch.set_default_dtype(before)
        pytest.fail(f"{request.node.nodeid} left torch's default dtype at {leaked} (was {before})", pytrace=False)
