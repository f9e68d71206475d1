"""Reference-image preprocessing for editing (docs/inference.md#reference-images, #pitfall-10).

Two branches see a reference: the VAE gets the resized picture in [-1, 1], the Qwen ViT gets it
rescaled by 28/32 and cut into Qwen2-VL patches.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .constants import CLIP_MEAN, CLIP_STD, REFERENCE_UNIT, VIT_MERGE, VIT_PATCH, VIT_SCALE, VIT_TEMPORAL
from .errors import DeepGenInputError
from .inputs import check_max_side, check_output_size


def reference_size(width: int, height: int, max_side: int = 512) -> tuple[int, int]:
    """Target (w, h) of a reference under the release CLI's rule (multiples of 32).

    If the long side reaches max_side it becomes max_side and the short side is scaled and rounded
    UP to a multiple of 32; a smaller image is only rounded up per side (never downscaled). The float
    arithmetic follows the release so that borderline ratios round the same way."""
    s = check_max_side(max_side)
    if width <= 0 or height <= 0:
        raise DeepGenInputError(f"reference image has an empty side ({width}x{height}).")
    unit = REFERENCE_UNIT
    if width >= height and width >= s:
        return s, math.ceil(height * (s / width) / unit) * unit
    if height >= width and height >= s:
        return math.ceil(width * (s / height) / unit) * unit, s
    return math.ceil(width / unit) * unit, math.ceil(height / unit) * unit


def output_size(width: int, height: int, references=()) -> tuple[int, int]:
    """(w, h) of the generated image (docs/inference.md#output-size). With exactly one reference it is that reference's
    resized size (`references`: resized (w, h) sizes) and width/height are ignored; otherwise width x
    height, which must be positive multiples of 16."""
    if len(references) == 1:
        return tuple(references[0])
    return check_output_size(width, height)


def nearest_size(width: int, height: int, multiple: int, max_side: int) -> tuple[int, int]:
    """The (w, h) nearest to width x height whose sides are positive multiples of `multiple` and at most
    `max_side`: each side rounded to the nearest multiple (halves up); a size beyond max_side is first scaled
    down to it keeping the aspect ratio. What a size error offers instead of the size that failed."""
    if width <= 0 or height <= 0 or multiple <= 0 or max_side < multiple:
        raise DeepGenInputError(f"no valid size near {width}x{height} (multiple {multiple}, at most {max_side}).")
    scale = min(1.0, max_side / max(width, height))
    top = max_side // multiple * multiple
    return tuple(min(top, max(multiple, math.floor(side * scale / multiple + 0.5) * multiple))
                 for side in (width, height))


def _as_rgb(image: torch.Tensor) -> torch.Tensor:
    """[H, W, C] (or a ComfyUI batch of one [1, H, W, C]) with C in 1..4 -> [H, W, 3]."""
    if not isinstance(image, torch.Tensor):
        raise DeepGenInputError(f"reference image must be a torch tensor [H, W, 3], got {type(image).__name__}.")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise DeepGenInputError(
            f"reference image must be one ComfyUI IMAGE row [H, W, 3] (channels last), got shape {tuple(image.shape)}; "
            "pass a list with one tensor per reference."
        )
    c = image.shape[-1]
    if c in (1, 2):  # grayscale (+alpha): replicate luminance, as PIL's L/LA -> RGB does
        return image[..., :1].expand(*image.shape[:2], 3)
    return image[..., :3]  # RGBA -> RGB drops alpha, as PIL's convert("RGB") does


def resized_uint8(image: torch.Tensor, max_side: int = 512) -> np.ndarray:
    """ComfyUI IMAGE row (float 0..1) -> resized RGB uint8 [h, w, 3] via PIL bicubic, like the release."""
    rgb = _as_rgb(image).detach().to("cpu", torch.float32)
    # round (not truncate) so an image loaded as uint8/255 comes back to its exact bytes
    arr = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr))
    w, h = reference_size(pil.width, pil.height, max_side)
    return np.asarray(pil.resize((w, h), resample=Image.BICUBIC))


def to_signed(pixels_uint8: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [h, w, 3] -> [3, h, w] in [-1, 1], computed as 2*(x/255)-1 in `dtype` (the release does it in bf16)."""
    x = torch.from_numpy(np.array(pixels_uint8, dtype=np.uint8)).to(dtype).permute(2, 0, 1)
    return 2 * (x / 255) - 1


def image_token_count(h: int, w: int) -> int:
    """LLM tokens of a resized (h, w) reference: the ViT sees 7/8 of it in 14-px patches merged 2x2."""
    if h % REFERENCE_UNIT or w % REFERENCE_UNIT:
        raise DeepGenInputError(f"reference sides must be multiples of {REFERENCE_UNIT}, got {w}x{h}.")
    return (h // REFERENCE_UNIT) * (w // REFERENCE_UNIT)


def vit_inputs(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resized reference [3, H, W] in [-1, 1] -> (pixel_values [N, 1176], grid_thw [[1, H'/14, W'/14]]).

    Computed in the dtype of `pixels`. Rows are in Qwen's order (t, h-block, w-block, h-in-2x2,
    w-in-2x2), columns (channel, temporal, py, px): what Qwen2-VL's image processor emits for an
    already-resized image, with the release's own 28/32 bilinear rescale in front."""
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise DeepGenInputError(f"vit_inputs expects [3, H, W], got shape {tuple(pixels.shape)}.")
    image_token_count(pixels.shape[1], pixels.shape[2])
    x = F.interpolate(pixels[None], scale_factor=VIT_SCALE, mode="bilinear", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).to(x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).to(x.dtype).view(1, 3, 1, 1)
    x = ((x + 1.0) / 2 - mean) / std
    _, c, h, w = x.shape
    gh, gw = h // VIT_PATCH, w // VIT_PATCH
    x = x[:, None].expand(1, VIT_TEMPORAL, c, h, w)
    x = x.reshape(VIT_TEMPORAL, c, gh // VIT_MERGE, VIT_MERGE, VIT_PATCH, gw // VIT_MERGE, VIT_MERGE, VIT_PATCH)
    x = x.permute(2, 5, 3, 6, 1, 0, 4, 7)  # (h, w, m, n) rows ; (c, t, p, q) columns
    rows = x.reshape(gh * gw, c * VIT_TEMPORAL * VIT_PATCH * VIT_PATCH)
    return rows, torch.tensor([[1, gh, gw]], dtype=torch.long, device=pixels.device)
