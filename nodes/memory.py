"""Memory of the DeepGen nodes: the out-of-memory guard every node runs under, and unloading a model early."""
from __future__ import annotations

import gc
import logging
import traceback
from contextlib import contextmanager

import comfy.model_management as mm
import torch

from .comfy_compat import offload_flags

MEMORY_HINTS = {
    "loading": "set the VLM loader's quantization to '8-bit' (or '4-bit nf4'), weight_dtype to bf16/fp16 (the DiT "
               "loader also offers fp8_e4m3fn), or free memory first (Unload models, or close other programs)",
    "encoding": "set the VLM loader's quantization to '8-bit', use smaller or fewer reference images (max_side), "
                "or start ComfyUI with {offload} so that models are offloaded",
    "sampling": "use a smaller width/height (or max_side for edits), fewer reference images, or start ComfyUI with "
                "{offload} so that the DiT is offloaded; the 8-bit VLM also leaves more room",
}


def is_out_of_memory(e: BaseException) -> bool:
    """GPU OOM (torch.OutOfMemoryError), Python's MemoryError, and the CPU allocator's RuntimeError."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


@contextmanager
def memory_guard(stage: str):
    """Re-raise an out-of-memory error as a clear one (what ran out, what to change) after releasing memory.

    Only OOM types are caught; everything else (interrupts included) passes untouched. A GPU OOM stays a
    torch.OutOfMemoryError so that ComfyUI still recognises it (and unloads its models too)."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        gpu = isinstance(e, torch.OutOfMemoryError)
        hint = MEMORY_HINTS.get(stage.split()[0], MEMORY_HINTS["sampling"]).format(offload=offload_flags())
        msg = (f"DeepGen ran out of {'GPU' if gpu else 'system'} memory while {stage} ({first}). "
               f"To fit: {hint}. "
               "Memory was released; the next job can run.")
        traceback.clear_frames(e.__traceback__)  # drop the activations the failed frames still hold
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()
        logging.error("DeepGen: out of memory while %s: %s", stage, first)
        raise (torch.OutOfMemoryError if gpu else MemoryError)(msg) from e


def unload(patcher) -> None:
    """Move a patcher's weights back to its offload device now (what free_memory does for one model)."""
    if patcher.load_device == patcher.offload_device:
        return
    for i, loaded in enumerate(mm.current_loaded_models):
        if loaded.model is patcher:
            mm.current_loaded_models.pop(i).model_unload()
            mm.soft_empty_cache()
            return
