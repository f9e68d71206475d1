"""Prompts (+ reference images) -> DiT conditioning, once per generation (docs/inference.md#vlm-forward, #editing).

Positive and negative rows go through the VLM and the SCB in one batch so that the shorter rows
carry the official left padding (docs/inference.md#pitfall-1). Precision and device are the caller's: everything is
computed in the dtype/device of the modules passed in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import DeepGenInputError
from .images import image_token_count, resized_uint8, to_signed, vit_inputs
from .prompts import edit_prompt, t2i_prompt, tokenize_pair
from .compat import text_config
from .inputs import check_max_side, check_prompt
from .precision import compute_dtype_of
from .vlm import calling_per_layer, progress_steps, stacked_hidden_states

log = logging.getLogger(__name__)


@dataclass
class DeepGenConditioning:
    """seq [2b, L, D] and pooled [2b, Dp]: rows 0..b-1 positive, b..2b-1 negative."""

    seq: torch.Tensor
    pooled: torch.Tensor
    references: list[torch.Tensor] = field(default_factory=list)  # resized refs [3, h, w] in [-1, 1], fp32
    # the same resized refs as RGB uint8 [h, w, 3]: what a caller with its own VAE (ComfyUI's, in 0..1) encodes,
    # so that nobody resizes a reference a second time
    reference_pixels: list[np.ndarray] = field(default_factory=list)
    prompt_text: list[str] = field(default_factory=list)  # the exact 2b strings fed to the tokenizer
    warnings: list[str] = field(default_factory=list)  # for the user (e.g. prompts longer than trained on)

    @property
    def batch_size(self) -> int:
        return self.seq.shape[0] // 2

    def positive(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seq[: self.batch_size], self.pooled[: self.batch_size]

    def negative(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seq[self.batch_size:], self.pooled[self.batch_size:]


def _device_and_dtype(linear) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype a Linear computes: its storage dtype, or the compute dtype when its
    weights are cast per call (precision.py), so a bf16-stored fp32-computing SCB keeps fp32 input."""
    w = linear.weight
    with torch.no_grad():
        return w.device, linear(torch.zeros(1, w.shape[1], dtype=w.dtype, device=w.device)).dtype


def _as_list(prompts, what: str) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts) if prompts is not None else None
    if not items or not all(isinstance(p, str) for p in items):
        raise DeepGenInputError(f"{what} must be a string or a non-empty list of strings, got {prompts!r}.")
    return items


TRAINED_PROMPT_TOKENS = 1024  # the release trained with max_length=1024 (docs/inference.md#prompts); longer prompts still work


def long_prompt_warning(what: str, tokens: int) -> str | None:
    """The user-facing note for a prompt of `tokens` text tokens (None when within what DeepGen was trained on)."""
    if tokens <= TRAINED_PROMPT_TOKENS:
        return None
    return (f"{what} is {tokens} tokens; DeepGen was trained on prompts of at most {TRAINED_PROMPT_TOKENS} tokens, "
            "so it may be followed less closely (nothing is truncated)")


def empty_prompt_warning(what: str, prompt: str, edit: bool) -> str | None:
    """The user-facing note for an empty (or blank) prompt: it runs, but the picture follows no text."""
    if prompt.strip():
        return None
    if edit:
        return (f"{what} is empty: DeepGen gets no edit instruction, so the picture may come back little changed; "
                "say what should change")
    return f"{what} is empty: DeepGen gets no description, so it draws nothing in particular; write what you want"


def _check_length(vlm, mask: torch.Tensor, think_tokens: int, b: int, image_tokens: int) -> list[str]:
    """Refuses sequences beyond the VLM's positions; returns (and logs) the warnings for long prompts."""
    warnings = []
    limit = getattr(text_config(vlm), "max_position_embeddings", None)
    lengths = mask.sum(dim=1).tolist()
    for i, n in enumerate(lengths):
        what = ("prompt" if i < b else "negative_prompt") + (f" {i % b}" if b > 1 else "")
        if limit and n + think_tokens > limit:
            raise DeepGenInputError(
                f"{what} is {n} tokens (template and image tokens included) + {think_tokens} think tokens, longer "
                f"than the VLM's context of {limit} positions; shorten it (it is refused, not truncated, so that "
                "nothing you wrote is silently dropped), or use smaller/fewer reference images.")
        note = long_prompt_warning(what, n - image_tokens)
        if note:
            log.warning(note)
            warnings.append(note)
    return warnings


def encode_steps(vlm, scb, references: int = 0) -> int:
    """The progress steps `encode` reports with `references` reference images: ViT blocks, decoder layers,
    SCB layers (with real weights on a CPU each SCB layer of a long prompt takes seconds)."""
    return progress_steps(vlm, references) + len(scb.connector.layers)


def encode(vlm, tokenizer, scb, prompts: list[str] | str, negative_prompts: list[str] | str,
           images: list[torch.Tensor] | None = None, max_side: int = 512, *,
           layer_callback=None, progress=None) -> DeepGenConditioning:
    """Text-to-image when `images` is None; editing with every tensor of `images` (ComfyUI IMAGE
    rows [H, W, 3], 0..1) as a reference shared by all b prompts and by the negative branch.

    A single negative string is used for every prompt. References are resized by the CLI rule
    (`reference_size`, long side at most `max_side`). layer_callback: called before every ViT block,
    decoder layer and SCB layer (ComfyUI passes its interrupt check); progress: called as progress(done,
    total) after each of them, total = encode_steps(...) (ComfyUI passes its progress bar).

    Prompts are never truncated (the release does not truncate at inference); a sequence longer than
    the VLM's position range (max_position_embeddings, think tokens included) is refused, naming the
    prompt and its token count."""
    positives = _as_list(prompts, "prompts")
    negatives = _as_list(negative_prompts, "negative_prompts")
    for name, text in [("prompt", p) for p in positives] + [("negative_prompt", n) for n in negatives]:
        check_prompt(text, name)
    if len(negatives) == 1 and len(positives) > 1:
        negatives = negatives * len(positives)
    if len(negatives) != len(positives):
        raise DeepGenInputError(f"got {len(positives)} prompts but {len(negatives)} negative prompts.")
    check_max_side(max_side)  # before the VLM runs, and for text-to-image too (where nothing is resized)

    resized, references, pixel_values, grids = [], [], [], []
    if images is None:
        texts = [t2i_prompt(p) for p in positives + negatives]
    else:
        if isinstance(images, torch.Tensor) or not len(images):
            raise DeepGenInputError(
                "images must be a non-empty list of [H, W, 3] tensors (one per reference); "
                "pass images=None for text-to-image."
            )
        vlm_dtype = compute_dtype_of(vlm)
        counts = []
        for image in images:
            pixels = resized_uint8(image, max_side)
            resized.append(pixels)
            references.append(to_signed(pixels, torch.float32))
            pv, grid = vit_inputs(to_signed(pixels, vlm_dtype))  # the release does this in the model dtype
            pixel_values.append(pv)
            grids.append(grid)
            counts.append(image_token_count(pixels.shape[0], pixels.shape[1]))
        texts = [edit_prompt(p, counts) for p in positives + negatives]

    b = len(positives)
    ids, mask = tokenize_pair(tokenizer, texts[:b], texts[b:])
    warnings = [w for i, p in enumerate(positives)
                if (w := empty_prompt_warning("prompt" + (f" {i}" if b > 1 else ""), p, images is not None))]
    for note in warnings:
        log.warning(note)
    warnings += _check_length(vlm, mask, scb.meta_queries.shape[0], b, sum(counts) if images is not None else 0)
    occurrences = pixel_values * (2 * b) if images is not None else None  # same objects: ViT runs once per ref
    grid_thw = torch.cat(grids * (2 * b)) if images is not None else None
    total, done = encode_steps(vlm, scb, len(images) if images is not None else 0), 0

    def step():
        nonlocal done
        done += 1
        progress(done, total)

    tick = step if progress is not None else None
    stacked = stacked_hidden_states(vlm, tokenizer, scb.meta_queries, ids, mask, occurrences, grid_thw,
                                    layer_callback=layer_callback, progress=tick)
    with torch.no_grad(), calling_per_layer(scb.connector.layers, layer_callback, tick):
        seq, pooled = scb(stacked.to(*_device_and_dtype(scb.projector_1)))
    return DeepGenConditioning(seq=seq, pooled=pooled, references=references, reference_pixels=resized,
                               prompt_text=texts, warnings=warnings)
