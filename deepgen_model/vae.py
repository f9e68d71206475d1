"""SD3 VAE helpers: reference encoding and latent decoding (docs/inference.md#vae, #reference-images, #decode)."""
from __future__ import annotations

import torch

from .constants import VAE_DOWNSCALE, VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR
from .errors import DeepGenInputError


def latent_scale_shift(vae) -> tuple[float, float]:
    """(scaling_factor, shift_factor) from vae.config; the SD3 constants where a field is missing."""
    config = getattr(vae, "config", {}) or {}
    scale, shift = config.get("scaling_factor"), config.get("shift_factor")
    return (VAE_SCALING_FACTOR if scale is None else float(scale), VAE_SHIFT_FACTOR if shift is None else float(shift))


def _param(vae) -> torch.Tensor:
    return next(vae.parameters())


@torch.no_grad()
def encode_reference(vae, pixels: torch.Tensor) -> torch.Tensor:
    """[3, h, w] in [-1, 1] -> normalised fp32 latent (mean - shift) * scale, [16, h/8, w/8].

    Uses the posterior MEAN: the official code draws `latent_dist.sample()` from the global torch
    RNG (docs/inference.md#pitfall-11), which no user seed controls; the mean is its deterministic centre (the SD3
    VAE's posterior std is tiny, so the difference is small). Result is on the VAE's device.
    """
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise DeepGenInputError(f"reference pixels must be [3, h, w] in [-1, 1], got {list(pixels.shape)}.")
    h, w = pixels.shape[-2:]
    if h % VAE_DOWNSCALE or w % VAE_DOWNSCALE:
        raise DeepGenInputError(
            f"reference is {w}x{h} px; sides must be multiples of {VAE_DOWNSCALE} (resize it first)."
        )
    p = _param(vae)
    mean = vae.encode(pixels[None].to(device=p.device, dtype=p.dtype)).latent_dist.mean[0]
    scale, shift = latent_scale_shift(vae)
    return (mean.float() - shift) * scale


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """[B, 16, h, w] normalised latents -> fp32 CPU images [B, 8h, 8w, 3] in 0..1 (ComfyUI IMAGE).

    x = D(z / scale + shift) in [-1, 1], then clamp((x + 1) / 2, 0, 1).
    """
    if latents.ndim != 4:
        raise DeepGenInputError(f"latents must be [B, C, h, w], got {list(latents.shape)}.")
    p = _param(vae)
    scale, shift = latent_scale_shift(vae)
    z = latents.to(device=p.device, dtype=torch.float32) / scale + shift
    x = vae.decode(z.to(p.dtype)).sample
    return ((x.float() + 1) / 2).clamp(0, 1).movedim(1, -1).cpu()
