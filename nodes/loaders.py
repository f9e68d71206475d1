"""The loader nodes: DeepGenCheckpointLoader (everything from one release, the beginner path), and
DeepGenVLMLoader, DeepGenSCBLoader, DeepGenDiTLoader, DeepGenVAELoader (one part each).

Each node resolves its widget values to listed paths (nodes/paths.py), opens the release once
(deepgen_model/release.py, which also says what may be combined), and builds the ComfyUI objects of
nodes/comfy_models.py. Loaded models live only in ComfyUI's own node-output cache.
"""
from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..deepgen_model import loading, vlm_loading
from ..deepgen_model.constants import DEFAULT_SHIFT
from ..deepgen_model.errors import DeepGenLoadError
from ..deepgen_model.precision import FP8_DTYPES, PRECISIONS, parse_dtype, resolve_dtypes
from ..deepgen_model.release import QWEN, SOURCES, UNIPIC2, MissingPart, Release
from . import paths
from .comfy_models import (DeepGenModelConfig, DeepGenSCB, DeepGenVLM, VLMModule, comfy_vae, deepgen_model_patcher,
                           encoder_patcher)
from .comfy_compat import advanced
from .comfy_ops import dit_weight_dtype
from .memory import memory_guard

NONE = paths.NONE
QUANTIZATIONS = ["none", "8-bit", "4-bit nf4"]
ATTENTIONS = list(vlm_loading.ATTN_IMPLEMENTATIONS)
DIT_PRECISIONS = [*PRECISIONS, "fp8_e4m3fn"]
_QUANT_ARG = {"none": None, "8-bit": "8bit", "4-bit nf4": "nf4"}  # widget -> vlm_loading.load_vlm


def expert(name: str, options: list[str], default: str, tooltip: str):
    """A loader's expert setting (weight_dtype, quantization, attention): a combo whose default suits almost everyone,
    marked advanced so frontends that know the flag fold it away."""
    return advanced(io.Combo.Input(name, options=options, default=default, tooltip=tooltip))


def weight_dtypes(choice: str, device: torch.device, stage: str) -> tuple[torch.dtype, torch.dtype]:
    """Widget value -> (storage, compute) dtypes of `stage` on `device`, as DeepGenPipeline picks them: auto is
    bf16 on CUDA (the release's precision); on a CPU bf16 storage computed per precision.cpu_compute_dtype."""
    if choice not in PRECISIONS:
        raise DeepGenLoadError(f"weight_dtype {choice!r} is not one of {PRECISIONS}.")
    return resolve_dtypes(device, choice, stage)


def quantization_arg(choice: str, device: torch.device) -> str | None:
    """Widget value -> load_vlm's quantization; bitsandbytes itself is imported by load_vlm only when used
    (a missing or broken install raises there, naming the package)."""
    if choice not in _QUANT_ARG:
        raise DeepGenLoadError(f"quantization {choice!r} is not one of {QUANTIZATIONS}.")
    if _QUANT_ARG[choice] is not None and device.type not in ("cuda", "cpu", "xpu"):
        raise DeepGenLoadError(f"quantization {choice!r} (bitsandbytes) does not run on {device.type}; "
                               "set quantization to 'none'.")
    return _QUANT_ARG[choice]


def _optional(value, kinds, what) -> str | None:
    return None if value in (None, NONE) else paths.resolve(value, kinds, what).path


def open_release(path: str, components, vlm_base: str | None = None, dit_base: str | None = None) -> Release:
    """Release.open + require(components); a missing base or file names the folders to put it in."""
    try:
        return Release.open(path, vlm_base, dit_base).require(*components)
    except MissingPart as e:
        if e.kind not in (QWEN, UNIPIC2):
            raise
        raise DeepGenLoadError(f"{e} Put it in one of: {', '.join(paths.folders_for((e.kind,)))}.") from e


# ------------------------------------------------------------------ builders shared by the nodes

def load_vlm_patcher(release: Release, description: str, weight_dtype: str = "auto", quantization: str = "none",
                     attention: str = "sdpa"):
    """DEEPGEN_VLM of an opened release."""
    load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
    storage, compute = weight_dtypes(weight_dtype, load_device, "vlm")
    quant = quantization_arg(quantization, load_device)
    if quant is not None:  # bitsandbytes weights are quantized for, and stay on, one device
        offload_device = load_device
    with memory_guard(f"loading the VLM from {release}"):
        vlm, tokenizer = vlm_loading.load_vlm(release, dtype=storage, device=offload_device,
                                              attn_implementation=attention, quantization=quant)
    module = VLMModule(vlm, tokenizer, offload_device, description)
    return encoder_patcher(module, storage, compute if quant is None else storage, load_device, offload_device)


def load_scb_patcher(release: Release, weight_dtype: str = "auto"):
    """DEEPGEN_SCB of an opened release."""
    load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
    storage, compute = weight_dtypes(weight_dtype, load_device, "scb")
    with memory_guard(f"loading the SCB connector from {release}"):
        scb = loading.load_scb(release, dtype=storage, device=offload_device)
    return encoder_patcher(scb, storage, compute, load_device, offload_device)


def load_dit_model(release: Release, weight_dtype: str = "auto"):
    """MODEL (ModelPatcher) of an opened release.

    weight_dtype "auto" keeps ComfyUI's choice for the device (bf16 on recent GPUs, fp32 on a CPU), except on a
    CPU with native bf16, where bf16 is faster (comfy_ops.dit_weight_dtype);
    otherwise the weights are stored in that dtype and computed in it where the device supports it
    (ComfyUI's manual cast covers the rest, e.g. bf16 storage on a CPU without native bf16 computes in fp32).
    fp8_e4m3fn stores the Linear weights (~99% of the DiT) in fp8 and the rest in bf16; every layer
    computes in bf16 (fp32 on a CPU) through ComfyUI's manual cast: about half the memory of bf16,
    slightly different images (docs/performance.md).
    """
    if weight_dtype not in DIT_PRECISIONS:
        raise DeepGenLoadError(f"weight_dtype {weight_dtype!r} is not one of {DIT_PRECISIONS}.")
    fp8 = FP8_DTYPES.get(weight_dtype)
    dtype = torch.bfloat16 if fp8 else parse_dtype(weight_dtype)
    with memory_guard(f"loading the DiT from {release}"):
        tensors, config = loading.dit_weights(release)
        if dtype is None:
            dtype = dit_weight_dtype(tensors, DeepGenModelConfig.supported_inference_dtypes)
        return deepgen_model_patcher(tensors, config, loading.load_scheduler_config(release), dtype,
                                     linear_dtype=fp8, source=f"the DiT of {release}")


def load_comfy_vae(release: Release):
    """VAE (comfy.sd.VAE) of an opened release; the engine's loading.load_vae gives the diffusers module."""
    with memory_guard(f"loading the VAE from {release}"):
        return comfy_vae(loading.load_vae(release, device="cpu"))


# ------------------------------------------------------------------ the nodes

class DeepGenCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenCheckpointLoader",
            display_name="DeepGen Checkpoint Loader",
            category="DeepGen/loaders",
            description="Loads everything DeepGen needs from one release: the DiT (MODEL), the VLM, the SCB "
                        "connector and the VAE.",
            inputs=[
                io.Combo.Input("ckpt_name", options=paths.choices(*SOURCES["checkpoint"]),
                               tooltip="The DeepGen-1.0-diffusers folder, the native DeepGen-1.0 model.pt, or a "
                                       "folder of converted deepgen_*.safetensors; looked up in models/deepgen."),
                io.Combo.Input("vlm_base", options=[NONE] + paths.choices(QWEN), default=NONE,
                               tooltip="Only for the native model.pt (it has no VLM): the Qwen2.5-VL-3B-Instruct "
                                       "folder; the LoRA in model.pt is merged into it."),
                io.Combo.Input("dit_base", options=[NONE] + paths.choices(UNIPIC2), default=NONE,
                               tooltip="Only for the native model.pt (it has no VAE): the "
                                       "UniPic2-SD3.5M-Kontext-2B folder (VAE, scheduler and DiT config)."),
                expert("weight_dtype", PRECISIONS, "auto",
                       "Weight precision of all parts. auto: bf16 on GPUs (as the release); on "
                       "CPUs bf16/fp32 storage computed in fp32."),
                expert("quantization", QUANTIZATIONS, "none",
                       "Quantize the VLM with bitsandbytes (8-bit or 4-bit NF4); needs bitsandbytes."),
                expert("attention", ATTENTIONS, "sdpa",
                       "Attention backend of the VLM: sdpa (default), eager, or flash_attention_2 "
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
        return paths.check(ckpt_name, SOURCES["checkpoint"], "ckpt_name")

    @classmethod
    def execute(cls, ckpt_name, vlm_base, dit_base, weight_dtype, quantization, attention) -> io.NodeOutput:
        entry = paths.resolve(ckpt_name, SOURCES["checkpoint"], "ckpt_name")
        release = open_release(entry.path, ("dit", "scb", "vlm", "tokenizer", "vae"),
                               _optional(vlm_base, (QWEN,), "vlm_base"), _optional(dit_base, (UNIPIC2,), "dit_base"))
        model = load_dit_model(release, weight_dtype)
        vlm = load_vlm_patcher(release, entry.name, weight_dtype, quantization, attention)
        scb = load_scb_patcher(release, weight_dtype)
        return io.NodeOutput(model, vlm, scb, load_comfy_vae(release))


def vlm_release(vlm_name: str, lora: str | None) -> tuple[Release, str]:
    """Widget values -> (opened release, description). A Qwen folder is the vlm_base of the native model.pt
    picked as lora, whose VLM LoRA is merged in."""
    entry = paths.resolve(vlm_name, SOURCES["vlm"], "vlm_name")
    with_lora = lora not in (None, NONE)
    if entry.kind == QWEN:
        if not with_lora:
            raise DeepGenLoadError(
                f"vlm_name {vlm_name!r} is a stock Qwen2.5-VL folder, which lacks DeepGen's fine-tuning: set lora to the "
                "native DeepGen model.pt (its VLM LoRA is merged in), or pick the release folder (vlm/ has it merged).")
        native = paths.resolve(lora, SOURCES["lora"], "lora")
        return open_release(native.path, ("vlm",), vlm_base=entry.path), f"{entry.name} + LoRA of {native.name}"
    if with_lora:
        raise DeepGenLoadError(f"lora {lora!r} can only be merged into a Qwen2.5-VL base folder; {vlm_name!r} "
                               f"already contains the DeepGen LoRA. Set lora to 'none'.")
    return open_release(entry.path, ("vlm", "tokenizer")), entry.name


class DeepGenVLMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenVLMLoader",
            display_name="DeepGen VLM Loader",
            category="DeepGen/loaders",
            description="Loads DeepGen's Qwen2.5-VL-3B (with the DeepGen LoRA) and its tokenizer.",
            inputs=[
                io.Combo.Input("vlm_name", options=paths.choices(*SOURCES["vlm"]),
                               tooltip="A DeepGen diffusers release folder (uses its vlm/ and tokenizer/), a "
                                       "Qwen2.5-VL-3B-Instruct folder, or a converted deepgen_vlm*.safetensors; "
                                       "looked up in models/deepgen and models/text_encoders."),
                expert("weight_dtype", PRECISIONS, "auto",
                       "Weight precision. auto: bf16 on GPUs (as the release); on CPUs without "
                       "native bf16, bf16 storage computed in fp32."),
                expert("quantization", QUANTIZATIONS, "none",
                       "Quantize the VLM with bitsandbytes (8-bit or 4-bit NF4) to save memory; "
                       "needs the bitsandbytes package. Slightly changes the conditioning."),
                expert("attention", ATTENTIONS, "sdpa",
                       "Attention backend of the VLM. sdpa (default) and eager need nothing extra; "
                       "flash_attention_2 needs flash-attn. The official padding behaviour is "
                       "reproduced with every backend."),
                io.Combo.Input("lora", options=[NONE] + paths.choices(*SOURCES["lora"]), default=NONE,
                               optional=True,
                               tooltip="Only with a Qwen2.5-VL-3B base folder as vlm_name: the native DeepGen "
                                       "model.pt whose VLM LoRA is merged in. 'none' = no LoRA."),
            ],
            outputs=[DeepGenVLM.Output("vlm", display_name="DEEPGEN_VLM")],
        )

    @classmethod
    def validate_inputs(cls, vlm_name):  # one report (see DeepGenCheckpointLoader); lora is resolved by execute
        return paths.check(vlm_name, SOURCES["vlm"], "vlm_name")

    @classmethod
    def execute(cls, vlm_name, weight_dtype, quantization, attention, lora=NONE) -> io.NodeOutput:
        release, description = vlm_release(vlm_name, lora)
        return io.NodeOutput(load_vlm_patcher(release, description, weight_dtype, quantization, attention))


class DeepGenSCBLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenSCBLoader",
            display_name="DeepGen SCB Loader",
            category="DeepGen/loaders",
            description="Loads the SCB (Stacked Channel Bridging) connector: think tokens, projectors and connector "
                        "layers that turn VLM hidden states into the DiT's context.",
            inputs=[
                io.Combo.Input("scb_name", options=paths.choices(*SOURCES["scb"]),
                               tooltip="A DeepGen diffusers release folder (uses connector/), a native model.pt, "
                                       "or a converted deepgen_scb*.safetensors; looked up in models/deepgen."),
                expert("weight_dtype", PRECISIONS, "auto",
                       "Weight precision. auto: bf16 on GPUs (as the release); fp32-compute on CPUs "
                       "without native bf16."),
            ],
            outputs=[DeepGenSCB.Output("scb", display_name="DEEPGEN_SCB")],
        )

    @classmethod
    def validate_inputs(cls, scb_name):
        return paths.check(scb_name, SOURCES["scb"], "scb_name")

    @classmethod
    def execute(cls, scb_name, weight_dtype) -> io.NodeOutput:
        entry = paths.resolve(scb_name, SOURCES["scb"], "scb_name")
        return io.NodeOutput(load_scb_patcher(open_release(entry.path, ("scb",)), weight_dtype))


class DeepGenDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenDiTLoader",
            display_name="DeepGen DiT Loader",
            category="DeepGen/loaders",
            description="Loads DeepGen's diffusion transformer as a ComfyUI MODEL (flow matching at the "
                        "release's shift, SD3 latents): core samplers and ReferenceLatent work with it.",
            inputs=[
                io.Combo.Input("dit_name", options=paths.choices(*SOURCES["dit"]),
                               tooltip="A DeepGen diffusers release folder (uses transformer/), a converted "
                                       "deepgen_dit.safetensors (or its folder), the native model.pt, or a DiT "
                                       "saved with ModelSave (any .safetensors in models/diffusion_models)."),
                io.Combo.Input("dit_base", options=[NONE, *paths.choices(*SOURCES["dit_base"])], default=NONE,
                               tooltip="Only for the native model.pt: the UniPic2-SD3.5M-Kontext-2B folder "
                                       f"(DiT config and scheduler). 'none' uses the built-in config and shift {DEFAULT_SHIFT}."),
                expert("weight_dtype", DIT_PRECISIONS, "auto",
                       "Weight precision. auto: ComfyUI's choice for your device "
                       "(bf16 on recent GPUs, fp32 on CPU). fp8_e4m3fn: Linear weights in fp8, "
                       "computed in bf16 - about half the memory, slightly different images."),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def validate_inputs(cls, dit_name):  # one report (see DeepGenCheckpointLoader); dit_base is resolved by execute
        return paths.check(dit_name, SOURCES["dit"], "dit_name")

    @classmethod
    def execute(cls, dit_name, dit_base, weight_dtype) -> io.NodeOutput:
        source = paths.resolve(dit_name, SOURCES["dit"], "dit_name").path
        base = _optional(dit_base, SOURCES["dit_base"], "dit_base")
        return io.NodeOutput(load_dit_model(Release.open(source, dit_base=base), weight_dtype))


class DeepGenVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DeepGenVAELoader",
            display_name="DeepGen VAE Loader",
            category="DeepGen/loaders",
            description="Loads the SD3 VAE of a DeepGen (or UniPic2) release folder or a converted "
                        "deepgen_vae.safetensors as a ComfyUI VAE.",
            inputs=[
                io.Combo.Input("vae_name", options=paths.choices(*SOURCES["vae"]),
                               tooltip="A DeepGen diffusers release or UniPic2 folder (uses vae/), or a converted "
                                       "deepgen_vae.safetensors (or its folder)."),
            ],
            outputs=[io.Vae.Output(display_name="VAE")],
        )

    @classmethod
    def validate_inputs(cls, vae_name):
        return paths.check(vae_name, SOURCES["vae"], "vae_name")

    @classmethod
    def execute(cls, vae_name) -> io.NodeOutput:
        entry = paths.resolve(vae_name, SOURCES["vae"], "vae_name")
        if entry.kind != UNIPIC2:
            return io.NodeOutput(load_comfy_vae(open_release(entry.path, ("vae",))))
        with memory_guard(f"loading the VAE from {entry.path}"):  # a UniPic2 folder is no release: its vae/ only
            return io.NodeOutput(comfy_vae(loading.load_vae_folder(entry.path, device="cpu")))


NODES = [DeepGenCheckpointLoader, DeepGenVLMLoader, DeepGenSCBLoader, DeepGenDiTLoader, DeepGenVAELoader]
