"""DeepGenCheckpointLoader: MODEL, DEEPGEN_VLM, DEEPGEN_SCB and VAE from one release (the beginner path)."""
from __future__ import annotations

from comfy_api.latest import io

from ..deepgen_model.errors import DeepGenLoadError
from . import dit, paths
from .vlm import (ATTENTIONS, PRECISIONS, QUANTIZATIONS, DeepGenSCB, DeepGenVLM, load_scb_patcher, load_vlm_patcher,
                  memory_guard)

NONE = "none"
CHECKPOINT_KINDS = (paths.RELEASE, paths.NATIVE, paths.CONVERTED)


def _optional(value, kinds, what):
    return None if value in (None, NONE) else paths.resolve(value, kinds, what)


class DeepGenCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenCheckpointLoader",
            display_name="DeepGen Checkpoint Loader",
            category="DeepGen/loaders",
            description="Loads everything DeepGen needs from one release: the DiT (MODEL), the VLM, the SCB "
                        "bridge and the VAE.",
            inputs=[
                io.Combo.Input("ckpt_name", options=paths.choices(*CHECKPOINT_KINDS),
                               tooltip="The DeepGen-1.0-diffusers folder, the native DeepGen-1.0 model.pt, or a "
                                       "folder of converted deepgen_*.safetensors; looked up in models/deepgen."),
                io.Combo.Input("vlm_base", options=[NONE] + paths.choices(paths.QWEN), default=NONE,
                               tooltip="Only for the native model.pt (it has no VLM): the Qwen2.5-VL-3B-Instruct "
                                       "folder; the LoRA in model.pt is merged into it."),
                io.Combo.Input("dit_base", options=[NONE] + paths.choices(paths.UNIPIC2), default=NONE,
                               tooltip="Only for the native model.pt (it has no VAE): the "
                                       "UniPic2-SD3.5M-Kontext-2B folder (VAE, scheduler and DiT config)."),
                io.Combo.Input("weight_dtype", options=PRECISIONS, default="auto",
                               tooltip="Weight precision of all parts. auto: bf16 on GPUs (as the release); on "
                                       "CPUs bf16/fp32 storage computed in fp32."),
                io.Combo.Input("quantization", options=QUANTIZATIONS, default="none",
                               tooltip="Quantize the VLM with bitsandbytes (8-bit or 4-bit NF4); needs bitsandbytes."),
                io.Combo.Input("attention", options=ATTENTIONS, default="sdpa",
                               tooltip="Attention backend of the VLM: sdpa (default), eager, or flash_attention_2 "
                                       "(needs flash-attn)."),
            ],
            outputs=[
                io.Model.Output("model", display_name="MODEL"),
                DeepGenVLM.Output("vlm", display_name="DEEPGEN_VLM"),
                DeepGenSCB.Output("scb", display_name="DEEPGEN_SCB"),
                io.Vae.Output("vae", display_name="VAE"),
            ],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name):
        # ComfyUI repeats a failure once per argument named here: vlm_base/dit_base are resolved (listed
        # entries only) by execute, before anything is read
        return paths.check(ckpt_name, CHECKPOINT_KINDS, "ckpt_name")

    @classmethod
    def execute(cls, ckpt_name, vlm_base, dit_base, weight_dtype, quantization, attention) -> io.NodeOutput:
        entry = paths.resolve(ckpt_name, CHECKPOINT_KINDS, "ckpt_name")
        qwen = _optional(vlm_base, (paths.QWEN,), "vlm_base")
        base = _optional(dit_base, (paths.UNIPIC2,), "dit_base")
        if entry.kind == paths.NATIVE:
            for missing, what, hint in ((qwen, "vlm_base", paths.QWEN), (base, "dit_base", paths.UNIPIC2)):
                if missing is None:
                    raise DeepGenLoadError(f"checkpoint {ckpt_name!r} is the native model.pt, which holds only the "
                                           f"DiT, the bridge and the VLM LoRA: set {what} to {paths.DOWNLOAD_HINT[hint]} "
                                           f"(put it in {', '.join(paths.folders_for((hint,)))}).")
        elif entry.kind == paths.RELEASE:
            for part in ("transformer", "connector", "vae", "tokenizer", "vlm"):
                paths.require(entry, part)
        elif entry.kind == paths.CONVERTED:
            for f in ("deepgen_dit.safetensors", "deepgen_scb.safetensors", "deepgen_vlm.safetensors",
                      "deepgen_vae.safetensors"):
                paths.require(entry, f)
        if entry.kind != paths.NATIVE and (qwen or base):
            raise DeepGenLoadError(f"vlm_base and dit_base are only used with the native model.pt; {ckpt_name!r} "
                                   "already contains its VLM and VAE. Set both to 'none'.")

        base_path = base.path if base else None
        with memory_guard(f"loading the DiT from {entry.path}"):
            model = dit.load_model(entry.path, base_path, weight_dtype)
        vlm = load_vlm_patcher(entry.path, qwen.path if qwen else None, entry.name, weight_dtype, quantization, attention)
        scb = load_scb_patcher(entry.path, weight_dtype)
        with memory_guard(f"loading the VAE from {entry.path}"):
            vae = dit.load_vae(entry.path, base_path)
        return io.NodeOutput(model, vlm, scb, vae)


NODES = [DeepGenCheckpointLoader]
