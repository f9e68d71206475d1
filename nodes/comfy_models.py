"""DeepGen's models as ComfyUI objects: the DiT as a MODEL, the VLM and the SCB connector as DEEPGEN_VLM /
DEEPGEN_SCB ModelPatchers, the VAE as a comfy.sd.VAE.

The DiT: a ModelPatcher over DeepGenModel, core's own SD3 model class, whose diffusion model is DeepGenMMDiT:
ComfyUI's MMDiT (the SD3.5-Medium blocks core runs for SD3) with DeepGen's reference tokens around core's
block loop (docs/inference.md#in-comfyui). Being core's classes, core's SD3 LoRA key maps, skip-layer
guidance patches, ControlNet residuals, attention overrides, model wrappers and ModelSave reach it as they
reach core's SD3. ComfyUI's samplers call `apply_model(x, sigma, c_crossattn=seq, y=pooled, ref_latents=[...])`
(timestep = sigma * 1000, docs/inference.md#scheduler). Conditioning keys:
  cross-attn context -> `c_crossattn` as CONDRegular: cond/uncond of different lengths are then run
      as separate DiT calls, never padded or repeated to a common length (docs/inference.md#pitfall-3);
  "pooled_output" -> `y`;
  "reference_latents" (raw VAE latents, what core ReferenceLatent appends) -> process_latent_in ->
      `ref_latents`, fed to the DiT as clean reference tokens (docs/inference.md#dit).
The VLM and the SCB are plain ModelPatchers, so ComfyUI's model management loads them onto the GPU,
and "Unload models" / POST /free release them; nothing is kept in a private cache. Their layers are
re-classed in place to comfy.ops classes, as the MMDiT is built from them, so ModelPatcher's lowvram partial
loading and per-call casting of smaller stored weights work for all three; the VLM and the SCB compute in a
fixed dtype where it differs from the storage one (a CPU's bf16 storage). How each model meets comfy.ops, and
which dtype it computes in, is nodes/comfy_ops.py.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from comfy_api.latest import io

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.patcher_extension
import comfy.sd
import comfy.supported_models_base
import comfy.utils

from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

from ..deepgen_model.assign import assign, check_materialised
from ..deepgen_model.constants import DEFAULT_SHIFT, NUM_TRAIN_TIMESTEPS
from ..deepgen_model.errors import DeepGenInputError, DeepGenLoadError
from ..deepgen_model.mmdit_format import mmdit_config, to_mmdit
from ..deepgen_model.precision import cast_floating, dominant_dtype, store_linear_weights
from ..deepgen_model.scheduler import latent_seq_len, official_sigmas, scheduler_shift, sigmas_from_config
from ..deepgen_model.transformer import (check_latent, latent_size_problem, nearest_latent_size, per_sample_references,
                                        reference_sequence)
from .comfy_ops import dit_operations, use_comfy_ops


# ------------------------------------------------------------------ the diffusion model

class _TargetResiduals(Sequence):
    """A ControlNet's per-block residuals for the target tokens, checked against the DiT, and widened with zeros
    over the reference tokens that follow them in DeepGen's sequence (references are clean images: nothing is
    added to them)."""

    def __init__(self, outputs, n_target: int, n_total: int, width: int):
        self.outputs, self.n_target, self.n_total, self.width = outputs, n_target, n_total, width

    def __len__(self):
        return len(self.outputs)

    def __getitem__(self, i):
        add = self.outputs[i]
        if add is None:
            return None
        if add.ndim != 3 or add.shape[1] != self.n_target or add.shape[2] != self.width:
            raise DeepGenInputError(
                f"the ControlNet gives residuals of shape {list(add.shape)}, but DeepGen's DiT has {self.n_target} "
                f"image tokens of width {self.width}: the ControlNet was made for another model (DeepGen's DiT is "
                "SD3.5-Medium's: use an SD3/SD3.5-Medium ControlNet).")
        if self.n_total == self.n_target:
            return add
        return torch.cat([add, add.new_zeros(add.shape[0], self.n_total - self.n_target, add.shape[2])], dim=1)


log = logging.getLogger(__name__)
_SAID_MISSING_BLOCKS: set[tuple[int, tuple[int, ...]]] = set()


def warn_missing_blocks(transformer_options: dict, depth: int) -> None:
    """Say once, in the log, which replaced blocks the DiT does not have. Skip-layer guidance (and any patch that
    replaces a block) names blocks by index, and core's MMDiT never reaches an index beyond its blocks, so such
    a patch does nothing, silently, in core as here."""
    replaced = transformer_options.get("patches_replace", {}).get("dit", {})
    missing = tuple(sorted(i for kind, i in replaced if kind == "double_block" and i >= depth))
    if missing and (depth, missing) not in _SAID_MISSING_BLOCKS:
        _SAID_MISSING_BLOCKS.add((depth, missing))
        log.warning("DeepGen: a block patch (skip-layer guidance?) names DiT block(s) %s, but this DiT has %d blocks "
                    "(0-%d): nothing happens for those; pick block numbers below %d.",
                    ", ".join(map(str, missing)), depth, depth - 1, depth)


class DeepGenMMDiT(OpenAISignatureMMDITWrapper):
    """ComfyUI's own MMDiT (SD3.5-Medium's blocks, so every core patch, attention override, LoRA and ControlNet
    reaches it as it reaches core's SD3) with DeepGen's reference tokens (docs/inference.md#dit): the DeepGen rules are the
    engine's (deepgen_model.transformer), the blocks are core's."""

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        ext = comfy.patcher_extension
        return ext.WrapperExecutor.new_class_executor(
            self._forward, self, ext.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps, context, y, control=None, transformer_options={}, ref_latents=None, **kwargs):
        if context is None or y is None:
            missing = "a context" if context is None else "'pooled_output'"
            raise DeepGenInputError(
                f"the DeepGen model got a conditioning without {missing}; use DeepGen's encode nodes "
                "(DeepGenTextEncode / DeepGenEditEncode) for positive and negative.")
        refs = per_sample_references([[r[i] for r in ref_latents] for i in range(x.shape[0])] if ref_latents else None,
                                     x.shape[0])  # ComfyUI batches each reference: [B, 16, h, w] per reference
        for i, z in enumerate(x):
            check_latent(z, f"latent {i}", *self.size_limits)
            for j, r in enumerate(refs[i]):
                check_latent(r, f"reference {j} of sample {i}", *self.size_limits)
        warn_missing_blocks(transformer_options, len(self.joint_blocks))
        tokens, n_target = reference_sequence(self.embed_latents, x, refs)
        c = self.t_embedder(timesteps, dtype=tokens.dtype) + self.y_embedder(y)
        if control is not None:
            control = {**control, "output": _TargetResiduals(control.get("output") or [], n_target, tokens.shape[1],
                                                             self.hidden_size)}
        tokens = self.forward_core_with_concat(tokens, c, self.context_embedder(context), control, transformer_options)
        return self.unpatchify(tokens[:, :n_target], hw=x.shape[-2:])

    def embed_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Patch tokens of a latent batch plus the centred crop of the position table for its own size."""
        return self.x_embedder(z) + comfy.ops.cast_to_input(self.cropped_pos_embed(z.shape[-2:], device=z.device), z)

    @property
    def size_limits(self) -> tuple[int, int, int]:
        """(latent channels, patch, largest latent side): what latent_size_problem checks."""
        p = self.x_embedder.patch_size[0]
        return self.in_channels, p, self.pos_embed_max_size * p

    @property
    def max_latent_side(self) -> int:
        return self.size_limits[2]

    def size_problem(self, h: int, w: int) -> str | None:
        return latent_size_problem(h, w, *self.size_limits[1:])

    def nearest_size(self, h: int, w: int) -> tuple[int, int]:
        return nearest_latent_size(h, w, *self.size_limits[1:])


class DeepGenModelConfig(comfy.supported_models_base.BASE):
    """An SD3-family model config for a DeepGen DiT; never auto-detected from a checkpoint (see DeepGenModel)."""

    unet_config = {}
    unet_extra_config = {}
    sampling_settings = {"shift": DEFAULT_SHIFT, "multiplier": NUM_TRAIN_TIMESTEPS}
    latent_format = comfy.latent_formats.SD3
    memory_usage_factor = 1.2  # ComfyUI's figure for the SD3 MMDiT
    # bf16 first: the release runs in bf16, and fp16 overflow is a known MMDiT risk.
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def __init__(self, unet_config: dict, scheduler_config: dict | None):
        # the MMDiT's own arguments (core's LoRA key maps read depth / num_blocks); it is built by
        # deepgen_model_patcher on the meta device, not by BaseModel
        super().__init__({**unet_config, "disable_unet_model_creation": True})
        self.scheduler_config = dict(scheduler_config or {})
        # dynamic shifting: the construction-time table is unshifted, mu is applied per image size
        dynamic = self.scheduler_config.get("use_dynamic_shifting")
        self.sampling_settings["shift"] = 1.0 if dynamic else scheduler_shift(self.scheduler_config)

    def get_model(self, state_dict, prefix="", device=None):
        raise NotImplementedError("DeepGen models are built by nodes.comfy_models.deepgen_model_patcher")


class DeepGenModel(comfy.model_base.SD3):
    """Core's SD3 model (so core's SD3 LoRA key maps, ModelSave and SD3 nodes treat it as one of theirs) whose
    diffusion model is DeepGenMMDiT, with DeepGen's reference latents as a condition."""

    def __init__(self, model_config: DeepGenModelConfig, diffusion_model: DeepGenMMDiT, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = diffusion_model
        self.memory_usage_factor_conds = ("ref_latents",)

    def encode_adm(self, **kwargs):
        return kwargs.get("pooled_output")  # absent: DeepGenMMDiT names the missing input

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)  # SD3's: c_crossattn as CONDRegular, never repeat-padded (docs/inference.md#pitfall-3)
        method = kwargs.get("reference_latents_method")
        if method is not None:
            raise DeepGenInputError(
                f"the conditioning asks for reference_latents_method {method!r} (FluxKontextMultiReferenceLatentMethod), "
                "which DeepGen cannot follow: DeepGen gives every reference image the target's own positions, "
                "centred (as it was trained), whatever the method. Remove that node from the graph.")
        refs = kwargs.get("reference_latents")
        if refs:
            out["ref_latents"] = comfy.conds.CONDList([self.process_latent_in(r) for r in refs])
        return out

    def lora_key_aliases(self) -> dict:
        """LoRA names of the DiT before it ran on the MMDiT (`diffusion_model.dit.<diffusers name>`, kohya-style
        `lora_unet_dit_…`) -> the MMDiT weight (and slice) core's own diffusers SD3 map gives that name."""
        aliases = {}
        for name, target in comfy.utils.mmdit_to_diffusers(self.model_config.unet_config, "diffusion_model.").items():
            if name.endswith(".weight"):
                stem = name[:-len(".weight")]
                aliases[f"diffusion_model.dit.{stem}"] = target
                aliases[f"lora_unet_dit_{stem.replace('.', '_')}"] = target
        return aliases

    def extra_conds_shapes(self, **kwargs):
        refs = kwargs.get("reference_latents")
        if not refs:
            return {}
        return {"ref_latents": [1, refs[0].shape[1], sum(r.shape[-2] * r.shape[-1] for r in refs)]}


def deepgen_model_patcher(tensors: dict, config: dict, scheduler_config: dict | None, dtype: torch.dtype,
                          linear_dtype: torch.dtype | None = None,
                          source: str = "the DiT") -> comfy.model_patcher.ModelPatcher:
    """MODEL of a DeepGen DiT: its tensors (diffusers names, consumed) and diffusers config, built as ComfyUI's
    MMDiT on the meta device and filled in place (no second copy), for ComfyUI's diffusion-model devices.

    dtype: the storage dtype; linear_dtype: another storage dtype for the Linear weights (fp8). The compute dtype
    is comfy_ops.dit_operations'. scheduler_config: the release's scheduler_config.json (None: shift 3.0, the
    native fallback).
    """
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    unet_config = mmdit_config(config)
    model_config = DeepGenModelConfig(unet_config, scheduler_config)
    state = to_mmdit(cast_floating(tensors, dtype), config["num_layers"])
    weight_dtype = linear_dtype or dominant_dtype(state)
    manual_cast, operations = dit_operations(weight_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(weight_dtype, manual_cast)
    with torch.device("meta"):
        dit = DeepGenMMDiT(**unet_config, dtype=dominant_dtype(state), operations=operations)
    assign(dit, state, source)
    check_materialised(dit, source)
    if linear_dtype is not None:
        store_linear_weights(dit, linear_dtype)
    dit.eval().requires_grad_(False)
    model = DeepGenModel(model_config, dit.to(offload_device), device=offload_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def model_sigmas(model: comfy.model_patcher.ModelPatcher, steps: int, latent_shape=None) -> torch.Tensor:
    """The official sigma list (docs/inference.md#scheduler) at the MODEL's flow shift (ModelSamplingSD3 patches honoured).

    A release with use_dynamic_shifting needs the latent size (latent_shape [.., h, w]).
    """
    sampling = model.get_model_object("model_sampling")
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
        raise DeepGenInputError(
            f"this MODEL samples with {type(sampling).__name__}, not discrete flow matching; "
            "connect a DeepGen MODEL (DeepGenDiTLoader) or an SD3-type model.")
    config = getattr(getattr(model.model, "model_config", None), "scheduler_config", None) or {}
    if config.get("use_dynamic_shifting"):
        if latent_shape is None:
            raise DeepGenInputError("this release's scheduler uses dynamic shifting (the schedule depends on the "
                                    "image size): use DeepGenSampler, which knows the latent size.")
        return sigmas_from_config(config, steps, latent_seq_len(latent_shape[-2], latent_shape[-1]))
    return official_sigmas(steps, float(sampling.shift), len(sampling.sigmas))


# ------------------------------------------------------------------ the VLM and the SCB connector

DeepGenVLM = io.Custom("DEEPGEN_VLM")
DeepGenSCB = io.Custom("DEEPGEN_SCB")


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
    """DEEPGEN_SCB -> SCBConnector."""
    return patcher.model


def encoder_patcher(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype, load_device,
                    offload_device) -> comfy.model_patcher.ModelPatcher:
    """DEEPGEN_VLM / DEEPGEN_SCB: `module` (weights stored in `storage`) computing in `compute`, its layers
    swapped to comfy.ops classes like the DiT's (comfy_ops.use_comfy_ops; bitsandbytes-quantized layers excepted)."""
    use_comfy_ops(module, compute=None if compute == storage else compute)
    module.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)


# ------------------------------------------------------------------ the VAE

def comfy_vae(ae) -> comfy.sd.VAE:
    """comfy.sd.VAE with the weights of a diffusers AutoencoderKL of any SD-family width.

    The ComfyUI architecture is derived from ae.config (not guessed from the 128-channel SD3 layout);
    absent quant convs (SD3: use_quant_conv False) become exact 1x1 identities. ComfyUI builds its VAE
    blocks natively, so a config it cannot build (another GroupNorm count) is refused, not patched in.
    """
    cfg = ae.config
    widths = list(cfg.block_out_channels)
    ch, z = widths[0], cfg.latent_channels
    where = f"VAE config of {cfg['_name_or_path']}" if cfg.get("_name_or_path") else "VAE config"
    if len(widths) != 4 or any(w % ch for w in widths) or not cfg.get("mid_block_add_attention", True):
        raise DeepGenLoadError(f"{where} (block_out_channels {widths}) is not an SD/SD3-family AutoencoderKL; "
                               "use the release's vae/ folder.")
    if cfg.norm_num_groups != 32:  # ComfyUI's VAE blocks build GroupNorm(32, C), as the SD3 VAE has
        raise DeepGenLoadError(f"{where} has norm_num_groups {cfg.norm_num_groups}, but ComfyUI's SD-family VAE "
                               "normalises in 32 groups (as the SD3 VAE does); use the release's vae/ folder.")
    ddconfig = {"double_z": True, "z_channels": z, "resolution": 256, "in_channels": cfg.in_channels,
                "out_ch": cfg.out_channels, "ch": ch, "ch_mult": [w // ch for w in widths],
                "num_res_blocks": cfg.layers_per_block, "attn_resolutions": [], "dropout": 0.0}
    sd = dict(ae.state_dict())
    dtype = dominant_dtype(sd)
    for name, n in (("quant_conv", 2 * z), ("post_quant_conv", z)):
        if not cfg.get(f"use_{name}", True):
            sd[f"{name}.weight"] = torch.eye(n, dtype=dtype)[:, :, None, None]
            sd[f"{name}.bias"] = torch.zeros(n, dtype=dtype)
    vae = comfy.sd.VAE(sd=sd, config={"params": {"embed_dim": z, "ddconfig": ddconfig}})
    vae.latent_channels = z
    return vae
