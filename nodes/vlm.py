"""DeepGenVLMLoader -> DEEPGEN_VLM and DeepGenSCBLoader -> DEEPGEN_SCB.

Both outputs are comfy.model_patcher.ModelPatcher objects, so ComfyUI's model management loads them
onto the GPU, and "Unload models" / POST /free release them; nothing is kept in a private cache (the
loaded objects live only in ComfyUI's own node-output cache).
"""
from __future__ import annotations

import gc
import logging
import traceback
from contextlib import contextmanager

import comfy.model_management as mm
import comfy.model_patcher
import torch
from comfy_api.latest import io

from ..deepgen_model.errors import DeepGenLoadError
from ..deepgen_model.precision import apply_manual_cast, resolve_dtypes
from . import paths

DeepGenVLM = io.Custom("DEEPGEN_VLM")
DeepGenSCB = io.Custom("DEEPGEN_SCB")

PRECISIONS = ["auto", "bf16", "fp16", "fp32"]
QUANTIZATIONS = ["none", "8-bit", "4-bit nf4"]
ATTENTIONS = ["sdpa", "eager", "flash_attention_2"]
NO_LORA = "none"
VLM_SOURCES = (paths.RELEASE, paths.QWEN, paths.VLM_FILE)
SCB_SOURCES = (paths.RELEASE, paths.NATIVE, paths.SCB_FILE)
_QUANT_ARG = {"none": None, "8-bit": "8bit", "4-bit nf4": "nf4"}  # widget -> loading.load_vlm


class VLMModule(torch.nn.Module):
    """What the VLM ModelPatcher manages: the Qwen2.5-VL model plus its tokenizer.

    A plain wrapper because ModelPatcher assigns `.device`, a read-only property on transformers models."""

    def __init__(self, vlm: torch.nn.Module, tokenizer, device: torch.device, description: str):
        super().__init__()
        self.vlm = vlm
        self.tokenizer = tokenizer
        self.device = device
        self.description = description


def vlm_parts_of(patcher) -> tuple[torch.nn.Module, object]:
    """DEEPGEN_VLM -> (transformers model, tokenizer)."""
    return patcher.model.vlm, patcher.model.tokenizer


def scb_module(patcher) -> torch.nn.Module:
    """DEEPGEN_SCB -> SCBBridge."""
    return patcher.model


def release(patcher) -> None:
    """Move a patcher's weights back to its offload device now (what free_memory does for one model)."""
    if patcher.load_device == patcher.offload_device:
        return
    for i, loaded in enumerate(mm.current_loaded_models):
        if loaded.model is patcher:
            mm.current_loaded_models.pop(i).model_unload()
            mm.soft_empty_cache()
            return


# ------------------------------------------------------------------ out of memory

MEMORY_HINTS = {
    "loading": "set the VLM loader's quantization to '8-bit' (or '4-bit nf4'), weight_dtype to bf16/fp16 (the DiT "
               "loader also offers fp8_e4m3fn), or free memory first (Unload models, or close other programs)",
    "encoding": "set the VLM loader's quantization to '8-bit', use smaller or fewer reference images (max_side), "
                "or start ComfyUI with --lowvram / --novram so that models are offloaded",
    "sampling": "use a smaller width/height (or max_side for edits), fewer reference images, or start ComfyUI with "
                "--lowvram / --novram so that the DiT is offloaded; the 8-bit VLM also leaves more room",
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
        msg = (f"DeepGen ran out of {'GPU' if gpu else 'system'} memory while {stage} ({first}). "
               f"To fit: {MEMORY_HINTS.get(stage.split()[0], MEMORY_HINTS['sampling'])}. "
               "Memory was released; the next job can run.")
        traceback.clear_frames(e.__traceback__)  # drop the activations the failed frames still hold
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()
        logging.error("DeepGen: out of memory while %s: %s", stage, first)
        raise (torch.OutOfMemoryError if gpu else MemoryError)(msg) from e


def weight_dtypes(choice: str, device: torch.device, stage: str) -> tuple[torch.dtype, torch.dtype]:
    """Widget value -> (storage, compute) dtypes of `stage` on `device`, as DeepGenPipeline picks them: auto is
    bf16 on CUDA (the release's precision); on a CPU bf16 storage computed per precision.cpu_compute_dtype."""
    if choice not in PRECISIONS:
        raise DeepGenLoadError(f"weight_dtype {choice!r} is not one of {PRECISIONS}.")
    return resolve_dtypes(device, None if choice == "auto" else choice, stage)


def quantization_arg(choice: str, device: torch.device) -> str | None:
    """Widget value -> load_vlm's quantization; bitsandbytes itself is imported by load_vlm only when used
    (a missing or broken install raises there, naming the package)."""
    if choice not in _QUANT_ARG:
        raise DeepGenLoadError(f"quantization {choice!r} is not one of {QUANTIZATIONS}.")
    if _QUANT_ARG[choice] is not None and device.type not in ("cuda", "cpu", "xpu"):
        raise DeepGenLoadError(f"quantization {choice!r} (bitsandbytes) does not run on {device.type}; "
                               "set quantization to 'none'.")
    return _QUANT_ARG[choice]


def vlm_source(vlm_name: str, lora: str | None) -> tuple[str, str | None, str]:
    """Widget values -> (source path for load_vlm, base_vlm_path, description)."""
    entry = paths.resolve(vlm_name, VLM_SOURCES, "vlm_name")
    with_lora = lora not in (None, NO_LORA)
    if entry.kind == paths.QWEN:
        if not with_lora:
            raise DeepGenLoadError(
                f"vlm_name {vlm_name!r} is a stock Qwen2.5-VL folder, which lacks DeepGen's fine-tuning: set lora to the "
                "native DeepGen model.pt (its VLM LoRA is merged in), or pick the release folder (vlm/ has it merged).")
        native = paths.resolve(lora, (paths.NATIVE,), "lora")
        return native.path, entry.path, f"{entry.name} + LoRA of {native.name}"
    if with_lora:
        raise DeepGenLoadError(f"lora {lora!r} can only be merged into a Qwen2.5-VL base folder; {vlm_name!r} "
                               f"already contains the DeepGen LoRA. Set lora to 'none'.")
    if entry.kind == paths.RELEASE:
        paths.require(entry, "vlm", "config.json", download="the release's vlm/ folder (LoRA merged), or pick a "
                      "Qwen2.5-VL-3B-Instruct folder as vlm_name with the LoRA of model.pt")
        paths.require(entry, "tokenizer", download="the release's tokenizer/ folder")
    return entry.path, None, entry.name


class DeepGenVLMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenVLMLoader",
            display_name="DeepGen VLM Loader",
            category="DeepGen/loaders",
            description="Loads DeepGen's Qwen2.5-VL-3B (with the DeepGen LoRA) and its tokenizer.",
            inputs=[
                io.Combo.Input("vlm_name", options=paths.choices(*VLM_SOURCES),
                               tooltip="A DeepGen diffusers release folder (uses its vlm/ and tokenizer/), a "
                                       "Qwen2.5-VL-3B-Instruct folder, or a converted deepgen_vlm*.safetensors; "
                                       "looked up in models/deepgen and models/text_encoders."),
                io.Combo.Input("weight_dtype", options=PRECISIONS, default="auto",
                               tooltip="Weight precision. auto: bf16 on GPUs (as the release); on CPUs without "
                                       "native bf16, bf16 storage computed in fp32."),
                io.Combo.Input("quantization", options=QUANTIZATIONS, default="none",
                               tooltip="Quantize the VLM with bitsandbytes (8-bit or 4-bit NF4) to save memory; "
                                       "needs the bitsandbytes package. Slightly changes the conditioning."),
                io.Combo.Input("attention", options=ATTENTIONS, default="sdpa",
                               tooltip="Attention backend of the VLM. sdpa (default) and eager need nothing extra; "
                                       "flash_attention_2 needs flash-attn. The official padding behaviour is "
                                       "reproduced with every backend."),
                io.Combo.Input("lora", options=[NO_LORA] + paths.choices(paths.NATIVE), default=NO_LORA,
                               optional=True,
                               tooltip="Only with a Qwen2.5-VL-3B base folder as vlm_name: the native DeepGen "
                                       "model.pt whose VLM LoRA is merged in. 'none' = no LoRA."),
            ],
            outputs=[DeepGenVLM.Output("vlm", display_name="DEEPGEN_VLM")],
        )

    @classmethod
    def validate_inputs(cls, vlm_name, lora=None):
        ok = paths.check(vlm_name, VLM_SOURCES, "vlm_name")
        if ok is not True or lora in (None, NO_LORA):
            return ok
        return paths.check(lora, (paths.NATIVE,), "lora")

    @classmethod
    def execute(cls, vlm_name, weight_dtype, quantization, attention, lora=NO_LORA) -> io.NodeOutput:
        src, base, desc = vlm_source(vlm_name, lora)
        return io.NodeOutput(load_vlm_patcher(src, base, desc, weight_dtype, quantization, attention))


def load_vlm_patcher(source: str, base_vlm_path: str | None, description: str, weight_dtype: str = "auto",
                     quantization: str = "none", attention: str = "sdpa"):
    """DEEPGEN_VLM from resolved paths (shared with the checkpoint loader)."""
    from ..deepgen_model.loading import load_vlm

    load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
    storage, compute = weight_dtypes(weight_dtype, load_device, "vlm")
    quant = quantization_arg(quantization, load_device)
    if quant is not None:  # bitsandbytes weights are quantized for, and stay on, one device
        offload_device = load_device
    with memory_guard(f"loading the VLM from {source}"):
        vlm, tokenizer = load_vlm(source, base_vlm_path=base_vlm_path, dtype=storage, device=offload_device,
                                  attn_implementation=attention, quantization=quant)
    if compute != storage and quant is None:
        apply_manual_cast(vlm, compute)
    vlm.eval().requires_grad_(False)
    module = VLMModule(vlm, tokenizer, offload_device, description)
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)


class DeepGenSCBLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenSCBLoader",
            display_name="DeepGen SCB Loader",
            category="DeepGen/loaders",
            description="Loads the Stacked Channel Bridge: think tokens, projectors and connector that turn VLM "
                        "hidden states into the DiT's context.",
            inputs=[
                io.Combo.Input("scb_name", options=paths.choices(*SCB_SOURCES),
                               tooltip="A DeepGen diffusers release folder (uses connector/), a native model.pt, "
                                       "or a converted deepgen_scb*.safetensors; looked up in models/deepgen."),
                io.Combo.Input("weight_dtype", options=PRECISIONS, default="auto",
                               tooltip="Weight precision. auto: bf16 on GPUs (as the release); fp32-compute on CPUs "
                                       "without native bf16."),
            ],
            outputs=[DeepGenSCB.Output("scb", display_name="DEEPGEN_SCB")],
        )

    @classmethod
    def validate_inputs(cls, scb_name):
        return paths.check(scb_name, SCB_SOURCES, "scb_name")

    @classmethod
    def execute(cls, scb_name, weight_dtype) -> io.NodeOutput:
        entry = paths.resolve(scb_name, SCB_SOURCES, "scb_name")
        if entry.kind == paths.RELEASE:
            paths.require(entry, "connector", "model.safetensors")
        return io.NodeOutput(load_scb_patcher(entry.path, weight_dtype))


def load_scb_patcher(path: str, weight_dtype: str = "auto"):
    """DEEPGEN_SCB from a resolved path (shared with the checkpoint loader)."""
    from ..deepgen_model.loading import load_bridge

    load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
    storage, compute = weight_dtypes(weight_dtype, load_device, "bridge")
    with memory_guard(f"loading the SCB bridge from {path}"):
        bridge = load_bridge(path, dtype=storage, device=offload_device)
    if compute != storage:
        apply_manual_cast(bridge, compute)
    bridge.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(bridge, load_device=load_device, offload_device=offload_device)


NODES = [DeepGenVLMLoader, DeepGenSCBLoader]
