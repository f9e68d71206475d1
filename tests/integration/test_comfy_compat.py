"""nodes/comfy_compat.py: version-dependent advice follows the running ComfyUI (in-process).

ComfyUI 0.28+ on NVIDIA runs with dynamic VRAM, where --lowvram does nothing; an out-of-memory error must then
name --novram. CPU test runs never have dynamic VRAM, so it is switched on here the way main.py does
(comfy.memory_management.aimdo_enabled), on a stand-in module where this ComfyUI has none (0.3.75).
"""
from __future__ import annotations

import sys
import types

import pytest
import torch


def _guard_message(comfy_inprocess) -> str:
    memory = sys.modules[f"{comfy_inprocess.pack.__name__}.nodes.memory"]
    with pytest.raises(torch.OutOfMemoryError) as err:
        with memory.memory_guard("sampling with the DiT"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return str(err.value)


def test_oom_advice_names_the_offload_flag_of_this_comfyui(comfy_inprocess, monkeypatch):
    compat = sys.modules[f"{comfy_inprocess.pack.__name__}.nodes.comfy_compat"]
    assert not compat.dynamic_vram()  # --cpu: estimate-based loading, where --lowvram works
    assert "start ComfyUI with --lowvram / --novram" in _guard_message(comfy_inprocess)

    memory_management = sys.modules.get("comfy.memory_management") or types.ModuleType("comfy.memory_management")
    monkeypatch.setitem(sys.modules, "comfy.memory_management", memory_management)
    monkeypatch.setattr(memory_management, "aimdo_enabled", True, raising=False)
    assert compat.dynamic_vram()
    msg = _guard_message(comfy_inprocess)
    assert "start ComfyUI with --novram (dynamic VRAM is on, so --lowvram does nothing)" in msg, msg
    assert "--lowvram / --novram" not in msg
