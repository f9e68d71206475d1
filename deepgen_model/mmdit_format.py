"""The DiT's weights in MMDiT naming, and back.

The release stores the DiT with diffusers' SD3Transformer2DModel names; Stability's reference MMDiT code,
ComfyUI's MMDiT and the SD3 LoRA trainers use another naming of the same weights (`joint_blocks.N.x_block…`,
q/k/v fused into one `qkv`, the adaptive norms of the final layer and of the last, context-pre-only block
with their two halves in the other order). `to_mmdit` converts a diffusers state dict (and its config) to
that naming for ComfyUI; `from_mmdit` reads one back (a DiT saved by ComfyUI's ModelSave) into diffusers
names and config. Tensors are renamed, concatenated or split; no value changes.
"""
from __future__ import annotations

import math
import re

import torch

from .errors import DeepGenLoadError

MMDIT_HEAD_DIM = 64  # the MMDiT derives its width from its depth: hidden = 64 x heads (SD3.5-M: 24 x 64)
SAVED_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # ComfyUI's ModelSave / a bare diffusion model

# one-to-one renames: diffusers name -> MMDiT name ({i}: the block index)
_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
}
_BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
# q, k, v projections fused into one qkv (in that order, along the output dimension)
_FUSED = {
    "attn.to_{}": "x_block.attn.qkv",
    "attn.add_{}_proj": "context_block.attn.qkv",
    "attn2.to_{}": "x_block.attn2.qkv",
}
_PARAMS = ("weight", "bias")
_SAI_BLOCK_KEY = re.compile(r"^joint_blocks\.(\d+)\.")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous emits (scale, shift), the MMDiT's final/pre-only norms (shift, scale)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _name_map(num_layers: int) -> dict[str, tuple[str, bool]]:
    """diffusers tensor name -> (MMDiT name, halves swapped), for every renamed (not fused) tensor."""
    out = {f"{d}.{p}": (f"{m}.{p}", False) for d, m in _TOP.items() for p in _PARAMS}
    out["pos_embed.pos_embed"] = ("pos_embed", False)
    out.update({f"norm_out.linear.{p}": (f"final_layer.adaLN_modulation.1.{p}", True) for p in _PARAMS})
    for i in range(num_layers):
        last = i == num_layers - 1
        out.update({f"transformer_blocks.{i}.{d}.{p}": (f"joint_blocks.{i}.{m}.{p}", False)
                    for d, m in _BLOCK.items() for p in _PARAMS})
        out.update({f"transformer_blocks.{i}.norm1_context.linear.{p}":
                    (f"joint_blocks.{i}.context_block.adaLN_modulation.1.{p}", last) for p in _PARAMS})
    return out


def _fused_map(num_layers: int) -> dict[str, list[str]]:
    """MMDiT qkv name -> its three diffusers names (q, k, v)."""
    return {f"joint_blocks.{i}.{m}.{p}": [f"transformer_blocks.{i}.{d.format(x)}.{p}" for x in "qkv"]
            for i in range(num_layers) for d, m in _FUSED.items() for p in _PARAMS}


def mmdit_config(config: dict) -> dict:
    """ComfyUI's MMDiT constructor arguments (its `unet_config`) for a diffusers SD3 DiT config."""
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    hidden = heads * head_dim
    if head_dim != MMDIT_HEAD_DIM or config.get("caption_projection_dim", hidden) != hidden:
        raise DeepGenLoadError(
            f"this DiT has {heads} heads of {head_dim} channels (caption_projection_dim "
            f"{config.get('caption_projection_dim')}); ComfyUI's MMDiT, which runs every SD3-family model, needs "
            f"{MMDIT_HEAD_DIM}-channel heads and caption_projection_dim = heads x {MMDIT_HEAD_DIM} (the release: "
            f"24 x 64 = 1536). Use the DeepGen release's transformer/ (or the Python API, deepgen_model.pipeline).")
    qk_norm = config.get("qk_norm")
    if qk_norm not in (None, "rms_norm"):
        raise DeepGenLoadError(f"this DiT's qk_norm is {qk_norm!r}; ComfyUI's MMDiT runs SD3.5's 'rms_norm' (or none)")
    size = config["pos_embed_max_size"]
    return {
        "in_channels": config["in_channels"],
        "out_channels": config.get("out_channels") or config["in_channels"],
        "patch_size": config["patch_size"],
        "depth": heads,
        "num_blocks": config["num_layers"],
        "input_size": None,
        "adm_in_channels": config["pooled_projection_dim"],
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": config["joint_attention_dim"], "out_features": hidden}},
        "num_patches": size * size,
        "pos_embed_max_size": size,
        "pos_embed_scaling_factor": None,
        "qk_norm": "rms" if qk_norm else None,
        "x_block_self_attn_layers": sorted(config.get("dual_attention_layers") or []),
    }


def to_mmdit(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A diffusers SD3 DiT state dict in MMDiT names. Consumes `state` (each q/k/v is dropped once fused, so
    the peak stays near one copy of the weights); tensors it does not know are refused, naming them."""
    out = {}
    for mm, parts in _fused_map(num_layers).items():
        if parts[0] in state:
            out[mm] = torch.cat([state.pop(p) for p in parts], dim=0)
    for name, (mm, swap) in _name_map(num_layers).items():
        if name in state:
            t = state.pop(name)
            out[mm] = _swap_halves(t) if swap else t
    if state:
        raise DeepGenLoadError(f"DiT tensors with no MMDiT counterpart: {sorted(state)[:8]}")
    return out


def strip_saved_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The diffusion model's own tensors of a ComfyUI-saved file (prefix `model.diffusion_model.` or
    `diffusion_model.`), or the state unchanged when it has no such prefix."""
    for prefix in SAVED_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def is_mmdit(names) -> bool:
    """Whether tensor names (prefix stripped) are an MMDiT's."""
    return "x_embedder.proj.weight" in names and any(_SAI_BLOCK_KEY.match(k) for k in names)


def from_mmdit(state: dict[str, torch.Tensor], source) -> tuple[dict[str, torch.Tensor], dict]:
    """(diffusers state dict, diffusers SD3 config) of an MMDiT-named state dict (prefix stripped); the config
    is read off the shapes. Refuses, naming `source`, what is no SD3-family MMDiT."""
    need = ("x_embedder.proj.weight", "context_embedder.weight", "y_embedder.mlp.0.weight", "pos_embed",
            "final_layer.linear.weight")
    if missing := [k for k in need if k not in state]:
        raise DeepGenLoadError(f"{source} is not an SD3-family DiT saved by ComfyUI: it lacks {missing} "
                               f"(it holds e.g. {sorted(state)[:3]}); pick the DeepGen release or a DiT saved "
                               "with ModelSave from a DeepGen MODEL")
    patch = state["x_embedder.proj.weight"]
    hidden, in_channels, p = patch.shape[0], patch.shape[1], patch.shape[2]
    blocks = sorted({int(m.group(1)) for k in state if (m := _SAI_BLOCK_KEY.match(k))})
    num_patches = state["pos_embed"].shape[1]
    size = math.isqrt(num_patches)
    if hidden % MMDIT_HEAD_DIM or blocks != list(range(len(blocks))) or size * size != num_patches:
        raise DeepGenLoadError(f"{source}: an MMDiT of width {hidden}, blocks {blocks[:3]}…{blocks[-1:]} and a "
                               f"{num_patches}-entry position table is no SD3-family DiT layout")
    config = {
        "sample_size": 128, "patch_size": p, "in_channels": in_channels,
        "out_channels": state["final_layer.linear.weight"].shape[0] // (p * p),
        "num_layers": len(blocks), "attention_head_dim": MMDIT_HEAD_DIM,
        "num_attention_heads": hidden // MMDIT_HEAD_DIM,
        "joint_attention_dim": state["context_embedder.weight"].shape[1], "caption_projection_dim": hidden,
        "pooled_projection_dim": state["y_embedder.mlp.0.weight"].shape[1], "pos_embed_max_size": size,
        "dual_attention_layers": [i for i in blocks if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in state],
        "qk_norm": "rms_norm" if "joint_blocks.0.x_block.attn.ln_q.weight" in state else None,
    }
    state = dict(state)
    out = {}
    for mm, parts in _fused_map(len(blocks)).items():
        if mm in state:
            for name, t in zip(parts, state.pop(mm).chunk(3, dim=0)):
                out[name] = t
    for name, (mm, swap) in _name_map(len(blocks)).items():
        if mm in state:
            t = state.pop(mm)
            out[name] = _swap_halves(t) if swap else t
    if state:
        raise DeepGenLoadError(f"{source}: tensors with no place in an SD3 DiT: {sorted(state)[:8]}")
    return out, config


__all__ = ["mmdit_config", "to_mmdit", "from_mmdit", "is_mmdit", "strip_saved_prefix", "MMDIT_HEAD_DIM"]
