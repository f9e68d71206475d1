"""Noise and the Euler flow-matching sampler with single-scale CFG (docs/inference.md#scheduler, #sampling)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .constants import LATENT_CHANNELS, NUM_TRAIN_TIMESTEPS, VAE_DOWNSCALE
from .errors import DeepGenInputError
from .inputs import check_output_size, check_seed

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def make_noise(seed: int, batch: int, height: int, width: int) -> torch.Tensor:
    """fp32 CPU N(0,1) noise [batch, 16, height/8, width/8] from torch.Generator("cpu").manual_seed(seed).

    Any seed in 0..2**64-1 works (ComfyUI's range). The draw equals ComfyUI's prepare_noise for an
    fp32 latent of the same shape. It is NOT the official bf16 CUDA noise (docs/inference.md#pitfall-12).
    """
    check_seed(seed)
    if batch < 1:
        raise DeepGenInputError(f"batch must be >= 1, got {batch}.")
    check_output_size(width, height)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (batch, LATENT_CHANNELS, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def sample(
    model: Callable,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cond: tuple[torch.Tensor, torch.Tensor],
    uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
    cfg_scale: float = 1.0,
    references: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]] | None = None,
    callback: Callback | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Euler flow matching: x <- x + (sigma[i+1] - sigma[i]) * v, timesteps = sigma * 1000.

    model: a DeepGenTransformer (or anything with its forward signature and, optionally, .dtype /
        .device). noise: [B, 16, h, w], the start latent at sigmas[0]. sigmas: [steps + 1]
        (e.g. scheduler.official_sigmas). cond / uncond: (seq [B, L, D], pooled [B, Dp]).
    cfg_scale: v = v_u + s (v_c - v_u) only when s > 1 (as official); otherwise one conditional
        pass per step and `uncond` is ignored. [uncond, cond] run in one DiT call (the official
        order) when both contexts have the same length, else in two calls (never pad or repeat a
        context: that changes the joint attention, docs/inference.md#pitfall-3).
    references: clean reference latents for both branches (shared list or one list per sample).
    callback(step, total, x, x0_pred) runs after each step (step = 0-based index of the step just
        done, x = the new latents, x0_pred = x_before - sigma * v); it may raise to cancel, and its
        exceptions propagate unchanged.
    compute_dtype: dtype of the model inputs (default: model.dtype). Latents stay fp32 between
        steps and the timestep stays fp32 (the DiT upcasts it itself). Returns fp32 latents on the
        model's device.
    """
    if noise.ndim != 4:
        raise DeepGenInputError(f"noise must be [B, C, h, w], got {list(noise.shape)}.")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    if sigmas.numel() < 2:
        raise DeepGenInputError("sigmas needs at least 2 values (steps + 1); use scheduler.official_sigmas(steps).")
    guided = cfg_scale > 1
    if guided and uncond is None:
        raise DeepGenInputError(f"cfg_scale {cfg_scale} > 1 needs the negative conditioning (uncond).")
    batch = noise.shape[0]
    for name, pair in (("cond", cond), ("uncond", uncond if guided else None)):
        if pair is not None and (pair[0].shape[0] != batch or pair[1].shape[0] != batch):
            raise DeepGenInputError(
                f"{name} has batch {pair[0].shape[0]}/{pair[1].shape[0]} but noise has batch {batch}."
            )

    device = getattr(model, "device", noise.device)
    dtype = compute_dtype or getattr(model, "dtype", torch.float32)
    cast = lambda pair: tuple(t.to(device=device, dtype=dtype) for t in pair)  # noqa: E731
    seq_c, pooled_c = cast(cond)
    one_call = False
    if guided:
        seq_u, pooled_u = cast(uncond)
        one_call = seq_u.shape[1:] == seq_c.shape[1:]
        if one_call:
            seq_2, pooled_2 = torch.cat([seq_u, seq_c]), torch.cat([pooled_u, pooled_c])
            refs_2 = references
            if references and not torch.is_tensor(references[0]):  # per-sample lists: same refs for both halves
                refs_2 = list(references) + list(references)

    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    total = sigmas.numel() - 1
    x = noise.to(device=device, dtype=torch.float32)
    for i in range(total):
        t = timesteps[i].to(device)
        xin = x.to(dtype)
        if not guided:
            v = model(xin, t.expand(batch), seq_c, pooled_c, references).float()
        elif one_call:
            v_u, v_c = model(torch.cat([xin, xin]), t.expand(2 * batch), seq_2, pooled_2, refs_2).float().chunk(2)
            v = v_u + cfg_scale * (v_c - v_u)
        else:
            v_u = model(xin, t.expand(batch), seq_u, pooled_u, references).float()
            v_c = model(xin, t.expand(batch), seq_c, pooled_c, references).float()
            v = v_u + cfg_scale * (v_c - v_u)
        x0 = x - sigmas[i].item() * v if callback is not None else None
        x = x + (sigmas[i + 1] - sigmas[i]).to(device) * v
        if callback is not None:
            callback(i, total, x, x0)
    return x
