"""The few Qwen2.5-VL API differences between transformers 4.51 and 5.x (docs/inference.md#pitfall-8).

Numerics are identical across versions; only where things live and how they are called differ.
"""
from __future__ import annotations

import inspect

import torch


def _base(vlm):
    """The Qwen2_5_VLModel (>= 4.52) that owns visual + language_model, or None on 4.51."""
    base = getattr(vlm, "model", None)
    if base is not None and hasattr(base, "language_model") and hasattr(base, "visual"):
        return base
    if hasattr(vlm, "language_model") and hasattr(vlm, "visual") and not hasattr(vlm, "lm_head"):
        return vlm  # a bare Qwen2_5_VLModel was given
    return None


def vlm_parts(vlm) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(vision tower, text decoder). >= 4.52: lmm.model.visual / lmm.model.language_model;
    4.51: lmm.visual / lmm.model (the text model)."""
    base = _base(vlm)
    if base is not None:
        return base.visual, base.language_model
    return vlm.visual, vlm.model


def visual_embeds(visual, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Merged ViT tokens [N/4, text_hidden]: a tensor in 4.x, `.pooler_output` of a ModelOutput in 5.x."""
    out = visual(pixel_values, grid_thw=grid_thw)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def rope_index(vlm, input_ids, grid_thw, attention_mask, image_token_id: int) -> torch.Tensor:
    """mRoPE position ids [3, B, L]. 5.x needs `mm_token_type_ids` (1 = image token) positionally."""
    base = _base(vlm)
    fn = (base if base is not None else vlm).get_rope_index
    if "mm_token_type_ids" in inspect.signature(fn).parameters:
        types = (input_ids == image_token_id).int()
        return fn(input_ids, types, image_grid_thw=grid_thw, attention_mask=attention_mask)[0]
    return fn(input_ids=input_ids, image_grid_thw=grid_thw, video_grid_thw=None, second_per_grid_ts=None,
              attention_mask=attention_mask)[0]


def text_config(vlm):
    """Config the decoder layers were built from (hidden_size, num_hidden_layers...): under
    `config.text_config` in 5.x, flat in 4.51; the text model's own config is right in all."""
    return vlm_parts(vlm)[1].config
