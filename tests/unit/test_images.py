"""Reference preprocessing (docs/inference.md#reference-images, #pitfall-10)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepgen_model.errors import DeepGenInputError
from deepgen_model.images import image_token_count, nearest_size, reference_size, vit_inputs
from reference_images import resize_reference

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("w,h,s,expected", [
    (96, 64, 64, (64, 64)),      # long side capped, short side 42.7 rounded UP to 64
    (128, 80, 96, (96, 64)),     # 60 -> 64
    (80, 128, 96, (64, 96)),     # portrait
    (50, 70, 512, (64, 96)),     # smaller than max_side: each side rounded up, never downscaled
    (512, 512, 512, (512, 512)),
    (1000, 600, 512, (512, 320)),  # 307.2 -> 320
    (33, 32, 512, (64, 32)),
])
def test_reference_size_cli_rule(w, h, s, expected):
    assert reference_size(w, h, s) == expected


@pytest.mark.parametrize("w,h,expected", [
    (5008, 5008, (1024, 1024)),  # the case: the nearest size, not the one that failed
    (2048, 1000, (1024, 496)),   # too large: scaled down keeping the aspect ratio (500 -> 496)
    (1000, 3000, (336, 1024)),   # portrait: 333.3 -> 336
    (520, 520, (528, 528)),      # 32.5 multiples: halves go up
    (72, 64, (80, 64)),
    (104, 56, (112, 64)),        # 6.5 -> 7, 3.5 -> 4
    (100, 8, (96, 16)),          # never below one multiple
    (512, 512, (512, 512)),      # a valid size is its own nearest
    (1030, 16, (1024, 16)),      # scaled by 1024/1030: 15.9 -> 16
])
def test_nearest_size_is_valid_and_close(w, h, expected):
    got = nearest_size(w, h, 16, 1024)
    assert got == expected
    assert all(side % 16 == 0 and 16 <= side <= 1024 for side in got)


def test_nearest_size_refuses_impossible_rules():
    with pytest.raises(DeepGenInputError):
        nearest_size(100, 100, 32, 16)


def test_max_side_must_be_multiple_of_32():
    with pytest.raises(DeepGenInputError, match="max_side"):
        reference_size(100, 100, 500)


def _uint8(h, w, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_resize_reference_is_pil_bicubic_then_signed():
    arr = _uint8(70, 100)
    image = torch.from_numpy(arr).float() / 255.0  # as ComfyUI's LoadImage builds an IMAGE row
    out = resize_reference(image, max_side=64)
    expected_u8 = np.asarray(Image.fromarray(arr).resize((64, 64)))  # the release: PIL default filter
    expected = 2 * (torch.from_numpy(expected_u8.copy()).float().permute(2, 0, 1) / 255) - 1
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.equal(out, expected)
    # the resample really happened (not a crop): differs from nearest
    nearest = np.asarray(Image.fromarray(arr).resize((64, 64), Image.NEAREST))
    assert not np.array_equal(nearest, expected_u8)


def test_uint8_round_trip_is_exact_without_resize():
    arr = _uint8(64, 96, seed=1)
    out = resize_reference(torch.from_numpy(arr).float() / 255.0, max_side=96)
    assert torch.equal(out, 2 * (torch.from_numpy(arr).float().permute(2, 0, 1) / 255) - 1)
    assert out.min() >= -1 and out.max() <= 1


def test_channel_variants_become_rgb():
    rgb = torch.from_numpy(_uint8(32, 64)).float() / 255.0
    rgba = torch.cat([rgb, torch.rand(32, 64, 1)], dim=-1)
    assert torch.equal(resize_reference(rgba, 64), resize_reference(rgb, 64))
    gray = rgb[..., :1]
    assert torch.equal(resize_reference(gray, 64), resize_reference(gray.expand(32, 64, 3), 64))
    assert torch.equal(resize_reference(rgb[None], 64), resize_reference(rgb, 64))  # ComfyUI batch of one


@pytest.mark.parametrize("bad", [torch.rand(32, 32), torch.rand(2, 32, 32, 3), torch.rand(3, 32, 32)[..., :0]])
def test_bad_image_shapes_raise(bad):
    with pytest.raises(DeepGenInputError):
        resize_reference(bad, 64)


def _hf_processor():
    import transformers

    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    return cls(do_resize=False, do_rescale=False, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
               patch_size=14, merge_size=2, temporal_patch_size=2)


@pytest.mark.parametrize("h,w", [(64, 96), (128, 64)])
def test_vit_inputs_match_the_qwen_image_processor(h, w):
    torch.manual_seed(0)
    x = torch.rand(3, h, w) * 2 - 1
    pv, grid = vit_inputs(x)
    # the release rescales by 28/32 itself (bilinear, no align_corners) and only then patchifies
    y = F.interpolate(x[None], scale_factor=28 / 32, mode="bilinear", align_corners=False)[0]
    ref = _hf_processor()(images=[((y + 1) / 2).permute(1, 2, 0).numpy()], return_tensors="pt",
                          input_data_format="channels_last")
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, h * 7 // 8 // 14, w * 7 // 8 // 14]]
    assert pv.shape == ref["pixel_values"].shape == (grid.prod().item(), 1176)
    assert torch.equal(pv, ref["pixel_values"].to(pv.dtype))
    assert pv.shape[0] == 4 * image_token_count(h, w)  # 2x2 merge -> one LLM token per 32x32 pixels


def test_vit_inputs_keep_dtype_and_validate():
    pv, _ = vit_inputs(torch.zeros(3, 32, 32, dtype=torch.bfloat16))
    assert pv.dtype == torch.bfloat16
    with pytest.raises(DeepGenInputError):
        vit_inputs(torch.zeros(3, 48, 32))
    assert image_token_count(512, 512) == 256 and image_token_count(64, 96) == 6
