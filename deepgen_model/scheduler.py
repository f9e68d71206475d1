"""The official flow-matching sigma schedule (docs/inference.md#scheduler, #pitfall-13).

DeepGen samples with diffusers' FlowMatchEulerDiscreteScheduler, whose `set_timesteps(N)`
shifts the sigma endpoints twice (once when the scheduler is built, once more on the linspace
between them). ComfyUI's built-in schedulers give a different list, so we rebuild diffusers'
list here, bit-exact, without needing a scheduler object.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .constants import DEFAULT_SHIFT, NUM_TRAIN_TIMESTEPS, SIZE_MULTIPLE, VAE_DOWNSCALE
from .errors import DeepGenInputError


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise DeepGenInputError(f"steps must be an integer >= 1, got {steps!r}.")
    return int(steps)


def _endpoints(num_train_timesteps: int, shift: float | None) -> tuple[float, float]:
    """sigma_max/min of the scheduler's construction-time fp32 table (shifted once unless None)."""
    train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
    train = torch.from_numpy(train) / num_train_timesteps
    if shift is not None:
        train = shift * train / (1 + (shift - 1) * train)
    return train[0].item(), train[-1].item()


def official_sigmas(steps: int, shift: float = DEFAULT_SHIFT,
                    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """fp32 Tensor[steps + 1]: the sigmas of `set_timesteps(steps)` (static shift), then a final 0.

    For shift 3 and 4 steps: [1.0, 0.857692, 0.602151, 0.008929, 0]. Timesteps are sigma * 1000.
    """
    steps = _check_steps(steps)
    if not shift > 0:
        raise DeepGenInputError(f"shift must be > 0, got {shift!r}.")
    sigma_max, sigma_min = _endpoints(num_train_timesteps, shift)
    # set_timesteps: linspace between the already shifted endpoints (float64), shifted again (the quirk).
    sigmas = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, steps) / num_train_timesteps
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1)])


def dynamic_sigmas(steps: int, mu: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                   time_shift_type: str = "exponential") -> torch.Tensor:
    """fp32 Tensor[steps + 1] of `set_timesteps(steps, mu=mu)` with use_dynamic_shifting=True.

    Here the construction-time table is left unshifted and the time shift is applied once. A mu that
    gives no schedule (overflow, or sigmas outside 0..1 or rising) is a DeepGenInputError naming it."""
    steps = _check_steps(steps)
    sigma_max, sigma_min = _endpoints(num_train_timesteps, None)
    sigmas = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, steps) / num_train_timesteps
    if time_shift_type not in ("exponential", "linear"):
        raise DeepGenInputError(f"scheduler time_shift_type {time_shift_type!r} is not 'exponential' or 'linear'.")
    with np.errstate(all="ignore"):
        if time_shift_type == "exponential":
            scale = math.exp(mu) if math.isfinite(mu) and abs(mu) < 700 else math.nan
        else:
            scale = mu
        sigmas = scale / (scale + (1 / sigmas - 1))
    if not (np.isfinite(sigmas).all() and (sigmas >= 0).all() and (sigmas <= 1).all() and (np.diff(sigmas) <= 0).all()):
        raise DeepGenInputError(
            f"the scheduler's dynamic shift gives mu = {mu:.4g} ({time_shift_type} time shift) for this image size, "
            "which makes no valid schedule (sigmas must fall from at most 1 to 0): check base_shift, max_shift, "
            "base_image_seq_len and max_image_seq_len in scheduler_config.json (the release's file has "
            "use_dynamic_shifting false).")
    return torch.cat([torch.from_numpy(sigmas).to(torch.float32), torch.zeros(1)])


# Config options that would change the sigma list in ways DeepGen never used.
_UNSUPPORTED = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                "invert_sigmas", "stochastic_sampling")


def _check_config(config: dict) -> None:
    used = [k for k in _UNSUPPORTED if config.get(k)]
    if used:
        raise DeepGenInputError(
            f"scheduler_config.json sets {used}, which DeepGen's Euler schedule does not support; "
            "use the release's scheduler/ folder (only shift / use_dynamic_shifting are honoured)."
        )


def scheduler_shift(config: dict) -> float:
    """The static `shift` of a FlowMatchEulerDiscreteScheduler config (3.0 when absent).

    Choice for `use_dynamic_shifting: true` (inferred off in the release, docs/inference.md#scheduler): the shift is
    then not a constant but depends on the image size, so this raises DeepGenInputError pointing
    to `sigmas_from_config`, which handles both modes (mu per docs/inference.md#scheduler).
    """
    _check_config(config)
    if config.get("use_dynamic_shifting"):
        raise DeepGenInputError(
            "scheduler_config.json has use_dynamic_shifting=true: the shift depends on the image size; "
            "use sigmas_from_config(config, steps, image_seq_len)."
        )
    return float(config.get("shift", DEFAULT_SHIFT))


def latent_seq_len(latent_h: int, latent_w: int) -> int:
    """The DiT's tokens for a latent_h x latent_w latent (2x2 patches): the image_seq_len of the dynamic shift.
    One rule for the engine's pipeline and the ComfyUI sampler, so both shift a size's schedule alike."""
    patch = SIZE_MULTIPLE // VAE_DOWNSCALE
    return (latent_h // patch) * (latent_w // patch)


def dynamic_shift_mu(config: dict, image_seq_len: int) -> float:
    """mu = base_shift + (max_shift - base_shift)(seq_len - base_len)/(max_len - base_len) (docs/inference.md#scheduler).

    image_seq_len = latent_seq_len(h, w) of the *target* latent only. Defaults follow the official pipeline
    (0.5 / 1.16 / 256 / 4096) when the config omits a field.
    """
    def get(key, default):
        return default if config.get(key) is None else config[key]

    base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.16)
    base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
    if base_len == max_len:
        raise DeepGenInputError(f"scheduler_config.json has use_dynamic_shifting true with base_image_seq_len = "
                                f"max_image_seq_len = {base_len}: the shift cannot be interpolated.")
    return base_shift + (max_shift - base_shift) * (image_seq_len - base_len) / (max_len - base_len)


def sigmas_from_config(config: dict | None, steps: int, image_seq_len: int | None = None) -> torch.Tensor:
    """The sigma list a scheduler config prescribes (None: the native .pt fallback, shift 3.0)."""
    config = config or {}
    _check_config(config)
    n = int(config.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS))
    if not config.get("use_dynamic_shifting"):
        return official_sigmas(steps, scheduler_shift(config), n)
    if image_seq_len is None:
        raise DeepGenInputError("use_dynamic_shifting=true needs image_seq_len = latent_seq_len(latent_h, latent_w).")
    mu = dynamic_shift_mu(config, image_seq_len)
    return dynamic_sigmas(steps, mu, n, config.get("time_shift_type", "exponential"))
