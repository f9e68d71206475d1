"""What differs between the ComfyUI releases the pack supports (0.3.75 .. 0.38), in one place.

Dynamic VRAM (comfy-aimdo; ComfyUI 0.28+ turns it on by default on NVIDIA): ComfyUI then streams the weights
of its own models (CoreModelPatcher = ModelPatcherDynamic) and ignores --lowvram; only --novram (or
--disable-dynamic-vram, then --lowvram) makes it offload by estimate again. The pack's patchers stay plain
ModelPatchers on every version: the encode nodes load the VLM with force_full_load (transformers code and the
engine take devices from its weights and buffers), which dynamic loading asserts against, and model_management
loads plain patchers beside dynamic ones. What a user is told to change therefore depends on the running ComfyUI.

comfy.ops, whose classes every pack model's layers are swapped to (nodes/comfy_ops.py use_comfy_ops), has
what the pack uses unchanged from 0.3.75 to 0.28: the Linear/Conv1d/Conv2d/Conv3d/LayerNorm/GroupNorm/Embedding
classes (Embedding's out_dtype), CastWeightBiasOp, cast_bias_weight(offloadable=True) / uncast_bias_weight.
"""
from __future__ import annotations

import sys


def dynamic_vram() -> bool:
    """True when this ComfyUI runs with dynamic VRAM (0.3.75 has no comfy.memory_management: never)."""
    memory_management = sys.modules.get("comfy.memory_management")
    return bool(getattr(memory_management, "aimdo_enabled", False))


def offload_flags() -> str:
    """The ComfyUI start-up flags that make it offload models to system RAM, for this ComfyUI."""
    if dynamic_vram():
        return "--novram (dynamic VRAM is on, so --lowvram does nothing)"
    return "--lowvram / --novram"


def keep_legacy_lora_names() -> None:
    """LoRAs keyed with the DiT's names from before it ran on ComfyUI's MMDiT (`diffusion_model.dit.<diffusers
    name>`, what core's LoraSave extracted from a DeepGen MODEL then) keep loading through core's LoRA loaders.

    Core builds LoRA key maps per model class in comfy.lora.model_lora_keys_unet and offers no hook for a model
    to add names; the wrapper adds what a model's `lora_key_aliases()` returns (only DeepGen models have one)
    and changes nothing for any other model. The function is looked up on the module at every call
    (comfy.sd.load_lora_for_models), so wrapping it once at import reaches every loader."""
    import comfy.lora

    original = comfy.lora.model_lora_keys_unet
    if getattr(original, "deepgen_aliases", False):
        return

    def model_lora_keys_unet(model, key_map={}):
        key_map = original(model, key_map)
        aliases = getattr(model, "lora_key_aliases", None)
        if aliases is not None:
            key_map.update({k: v for k, v in aliases().items() if k not in key_map})
        return key_map

    model_lora_keys_unet.deepgen_aliases = True
    comfy.lora.model_lora_keys_unet = model_lora_keys_unet



def advanced(widget):
    """Marks a V3 widget input as an expert setting, which frontends that know the flag hide until the node's
    "Show Advanced" is on (frontend 1.32 does): its `advanced` attribute where comfy_api's inputs have one (0.33
    and later), else the same key in its extra_dict (0.3.75, whose Combo.Input takes no extra_dict argument).
    /object_info carries `"advanced": true` either way; a frontend that does not know the flag shows the widget."""
    if hasattr(widget, "advanced"):
        widget.advanced = True
    else:
        widget.extra_dict["advanced"] = True
    return widget
