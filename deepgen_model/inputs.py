"""Checking what a user types, before any work: prompt text, guidance scale, steps, seeds, output sizes and the
reference size (max_side). One implementation for the nodes, the Python API (DeepGenPipeline) and the main command
(scripts/run_example.py); each refusal is a DeepGenInputError naming the input and offering the nearest valid value.
Files and configs are checked by deepgen_model/validation.py."""
from __future__ import annotations

import math
import numbers

from .constants import (DEFAULT_CFG, DEFAULT_STEPS, IMAGE_PAD_TOKEN, MAX_STEPS, REFERENCE_UNIT, SIZE_MULTIPLE)
from .errors import DeepGenInputError

IMAGE_TOKENS = (IMAGE_PAD_TOKEN, "<|video_pad|>")  # placeholders the engine fills with image features


# ------------------------------------------------------------------ prompt text

def check_prompt(text: str, name: str) -> None:
    """User text must not contain the placeholders the engine fills with image/video features (their count
    must match the pixels given). Other Qwen special tokens (<|im_end|>, <|vision_start|>...) typed by a
    user are parsed as special tokens, exactly as the official code does. Text must be Unicode that UTF-8 can
    carry (a JSON "\\ud800" escape gives a lone surrogate, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DeepGenInputError(
            f"{name} contains an unpaired surrogate (U+{ord(text[e.start]):04X} at character {e.start + 1}): that is "
            f"not a character but half of a UTF-16 pair, usually left by cutting text or by a \\u escape in JSON; "
            f"remove it from the {name} or type the character again.") from None
    found = [t for t in IMAGE_TOKENS if t in text]
    if found:
        raise DeepGenInputError(
            f"{name} contains {', '.join(found)}: that token stands for image features and is placed by DeepGen "
            f"itself for each reference image; remove it from the {name} (for an edit, connect the picture as "
            "image1..image4 instead).")


# ------------------------------------------------------------------ sampling inputs

# The nodes, the Python API (DeepGenPipeline) and the main command (scripts/run_example.py) check their
# inputs with these: one rule each, and a refusal that offers the nearest valid value.

def check_cfg(cfg, name: str = "cfg", high: float = 100.0) -> float:
    """A finite guidance scale in 0..high (NaN passes ComfyUI's own min/max comparison)."""
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or not 0 <= cfg <= high:
        raise DeepGenInputError(f"{name} is {cfg!r}: it must be a finite number in 0..{high:g} (the authors use "
                                f"{DEFAULT_CFG}; 1 or below runs the positive branch only).")
    return float(cfg)


AUTHORS_CFG = (3.5, 7.5)  # the guidance scales of the authors' scripts (4.0 in nearly all of them)
HIGH_CFG = 10.0


def cfg_warning(cfg: float, name: str = "cfg") -> str | None:
    """The user-facing note for a valid but extreme guidance scale (None when it is ordinary)."""
    if cfg <= HIGH_CFG:
        return None
    return (f"{name} is {cfg:g}, far above the {AUTHORS_CFG[0]:g}-{AUTHORS_CFG[1]:g} the authors use (4.0 by default): "
            "expect harsh, oversaturated, burnt-looking pictures; try 4")


def check_steps(steps, high: int = MAX_STEPS, name: str = "steps") -> int:
    """A whole number of sampling steps in 1..high."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= high:
        near = _nearest(steps, 1, 1, high)
        raise DeepGenInputError(f"{name} is {steps!r}: it must be a whole number in 1..{high} ("
                                + (f"nearest: {near}; " if near is not None else "") + f"the authors use {DEFAULT_STEPS}).")
    return steps


def check_seed(seed, name: str = "seed") -> int:
    """A seed in ComfyUI's range, 0..2**64-1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**64 - 1:
        raise DeepGenInputError(f"{name} must be an integer in 0..2**64-1, got {seed!r}.")
    return seed


def check_output_size(width, height, name: str = "") -> tuple[int, int]:
    """Output sides: positive multiples of 16 px (the VAE's 8 x the DiT's patch of 2). `name` prefixes the
    message (the main command's "--size 100x100: ")."""
    for side, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0 or v % SIZE_MULTIPLE:
            near = [_nearest(x, SIZE_MULTIPLE, SIZE_MULTIPLE) for x in (width, height)]
            raise DeepGenInputError(f"{name}{side} must be a positive multiple of {SIZE_MULTIPLE}, got {v!r} (output sides "
                                    f"are multiples of {SIZE_MULTIPLE} px)" + (
                                        f"; the nearest valid size is {near[0]}x{near[1]}." if None not in near else "."))
    return width, height


def check_max_side(max_side) -> int:
    """The longest side of a resized reference: a positive multiple of 32 px (docs/inference.md#reference-images)."""
    if int(max_side) != max_side or max_side <= 0 or max_side % REFERENCE_UNIT:
        raise DeepGenInputError(f"max_side must be a positive multiple of {REFERENCE_UNIT}, got {max_side}.")
    return int(max_side)


def _nearest(value, unit: int, low: int, high: int | None = None) -> int | None:
    """The multiple of `unit` in low..high nearest to a number (halves round up); None for a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    near = max(low, unit * math.floor(value / unit + 0.5))
    return near if high is None else min(high, near)
