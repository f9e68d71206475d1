"""Loader nodes for DeepGen's DiT (-> MODEL) and VAE (-> VAE), plus the builders other nodes reuse."""
from __future__ import annotations

import contextlib
import os

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.ops
import comfy.sd

from ..deepgen_model import loading
from ..deepgen_model.errors import DeepGenLoadError
from ..deepgen_model.precision import cpu_compute_dtype, store_linear_weights
from . import paths
from .comfy_dit import DeepGenModelConfig, deepgen_model_patcher
from .vlm import memory_guard

WEIGHT_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn}
NO_BASE = "none"
DIT_KINDS = (paths.RELEASE, paths.CONVERTED, paths.DIT_FILE, paths.NATIVE)
BASE_KINDS = (paths.UNIPIC2, paths.RELEASE)
VAE_KINDS = (paths.RELEASE, paths.UNIPIC2, paths.CONVERTED, paths.VAE_FILE)


def load_model(source: str, base_path: str | None = None, weight_dtype: str = "auto"):
    """MODEL (ModelPatcher) from a release folder, converted folder/file or native model.pt (+ UniPic2 base).

    weight_dtype "auto" keeps ComfyUI's choice for the device (bf16 on recent GPUs, fp32 on a CPU), except on a
    CPU with native bf16, where bf16 is faster (precision.cpu_compute_dtype);
    otherwise the weights are stored in that dtype and computed in it where the device supports it
    (ComfyUI's manual cast covers the rest, e.g. bf16 storage on a CPU without native bf16 computes in fp32).
    fp8_e4m3fn stores the Linear weights (~99% of the DiT) in fp8 and the rest in bf16; every layer
    computes in bf16 (fp32 on a CPU) through ComfyUI's manual cast: about half the memory of bf16,
    slightly different images (docs/performance.md).
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise DeepGenLoadError(f"weight_dtype {weight_dtype!r} is not one of {list(WEIGHT_DTYPES)}.")
    dtype = WEIGHT_DTYPES[weight_dtype]
    fp8 = dtype is not None and dtype.itemsize == 1
    dit = loading.load_dit(source, base_path=base_path, dtype=torch.bfloat16 if fp8 else dtype, device="cpu")
    if fp8:
        store_linear_weights(dit, dtype)
    if dtype is None:
        stored = next(dit.parameters()).dtype
        params = sum(p.numel() for p in dit.parameters())
        auto = mm.unet_dtype(model_params=params, supported_dtypes=DeepGenModelConfig.supported_inference_dtypes,
                             weight_dtype=stored)
        if mm.get_torch_device().type == "cpu" and cpu_compute_dtype("dit") == torch.bfloat16:
            auto = torch.bfloat16  # ComfyUI picks fp32 on every CPU; one with native bf16 runs bf16 faster
        dit.to(auto)
    scheduler = loading.load_scheduler_config(source, base_path=base_path)
    return deepgen_model_patcher(dit, scheduler)


@contextlib.contextmanager
def _group_norm_groups(groups: int):
    """ComfyUI's VAE blocks build GroupNorm(32, C) (the SD3 VAE's count); build `groups` instead.

    Only VAEs with another group count (test-size ones) take this path; the swap of ComfyUI's
    GroupNorm class lasts for the construction only (ComfyUI builds models on one thread).
    """
    ops = comfy.ops.disable_weight_init
    original = ops.GroupNorm
    if groups != 32:
        class GroupNorm(original):
            def __init__(self, num_groups, num_channels, *args, **kwargs):
                super().__init__(groups, num_channels, *args, **kwargs)

        ops.GroupNorm = GroupNorm
    try:
        yield
    finally:
        ops.GroupNorm = original


def comfy_vae(ae) -> comfy.sd.VAE:
    """comfy.sd.VAE with the weights of a diffusers AutoencoderKL of any SD-family size.

    The ComfyUI architecture is derived from ae.config (not guessed from the 128-channel SD3 layout);
    absent quant convs (SD3: use_quant_conv False) become exact 1x1 identities.
    """
    cfg = ae.config
    widths = list(cfg.block_out_channels)
    ch, z = widths[0], cfg.latent_channels
    if len(widths) != 4 or any(w % ch for w in widths) or not cfg.get("mid_block_add_attention", True):
        raise DeepGenLoadError(f"VAE config (block_out_channels {widths}) is not an SD/SD3-family AutoencoderKL; "
                               "use the release's vae/ folder.")
    ddconfig = {"double_z": True, "z_channels": z, "resolution": 256, "in_channels": cfg.in_channels,
                "out_ch": cfg.out_channels, "ch": ch, "ch_mult": [w // ch for w in widths],
                "num_res_blocks": cfg.layers_per_block, "attn_resolutions": [], "dropout": 0.0}
    sd = dict(ae.state_dict())
    dtype = next(iter(sd.values())).dtype
    for name, n in (("quant_conv", 2 * z), ("post_quant_conv", z)):
        if not cfg.get(f"use_{name}", True):
            sd[f"{name}.weight"] = torch.eye(n, dtype=dtype)[:, :, None, None]
            sd[f"{name}.bias"] = torch.zeros(n, dtype=dtype)
    with _group_norm_groups(cfg.norm_num_groups):
        vae = comfy.sd.VAE(sd=sd, config={"params": {"embed_dim": z, "ddconfig": ddconfig}})
    vae.latent_channels = z
    return vae


def load_vae(source: str, base_path: str | None = None) -> comfy.sd.VAE:
    return comfy_vae(loading.load_vae(source, base_path=base_path, device="cpu"))


def _load_vae_entry(entry) -> comfy.sd.VAE:
    if entry.kind != paths.UNIPIC2:
        return load_vae(entry.path)
    # a UniPic2 folder is no DeepGen layout for deepgen_model.loading: read its vae/ directly
    from diffusers import AutoencoderKL

    folder = os.path.dirname(paths.require(entry, "vae", "config.json"))
    return comfy_vae(AutoencoderKL.from_pretrained(folder))


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
                io.Combo.Input("dit_name", options=paths.choices(*DIT_KINDS),
                               tooltip="A DeepGen diffusers release folder (uses transformer/), a converted "
                                       "deepgen_dit.safetensors (or its folder), or the native model.pt."),
                io.Combo.Input("dit_base", options=[NO_BASE, *paths.choices(*BASE_KINDS)], default=NO_BASE,
                               tooltip="Only for the native model.pt: the UniPic2-SD3.5M-Kontext-2B folder "
                                       "(DiT config and scheduler). 'none' uses the built-in config and shift 3.0."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="auto",
                               tooltip="Weight precision. auto: ComfyUI's choice for your device "
                                       "(bf16 on recent GPUs, fp32 on CPU). fp8_e4m3fn: Linear weights in fp8, "
                                       "computed in bf16 - about half the memory, slightly different images."),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def validate_inputs(cls, dit_name, dit_base):
        ok = paths.check(dit_name, DIT_KINDS, "dit_name")
        if ok is True and dit_base != NO_BASE:
            ok = paths.check(dit_base, BASE_KINDS, "dit_base")
        return ok

    @classmethod
    def execute(cls, dit_name, dit_base, weight_dtype) -> io.NodeOutput:
        source = paths.resolve(dit_name, DIT_KINDS, "dit_name").path
        base = None if dit_base == NO_BASE else paths.resolve(dit_base, BASE_KINDS, "dit_base").path
        with memory_guard(f"loading the DiT from {source}"):
            return io.NodeOutput(load_model(source, base, weight_dtype))


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
                io.Combo.Input("vae_name", options=paths.choices(*VAE_KINDS),
                               tooltip="A DeepGen diffusers release or UniPic2 folder (uses vae/), or a converted "
                                       "deepgen_vae.safetensors (or its folder)."),
            ],
            outputs=[io.Vae.Output(display_name="VAE")],
        )

    @classmethod
    def validate_inputs(cls, vae_name):
        return paths.check(vae_name, VAE_KINDS, "vae_name")

    @classmethod
    def execute(cls, vae_name) -> io.NodeOutput:
        entry = paths.resolve(vae_name, VAE_KINDS, "vae_name")
        with memory_guard(f"loading the VAE from {entry.path}"):
            return io.NodeOutput(_load_vae_entry(entry))


NODES = [DeepGenDiTLoader, DeepGenVAELoader]
