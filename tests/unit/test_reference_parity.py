"""The engine against an independent implementation of the official loop (bench/reference_loop.py).

The two share no code: different FlashAttention-2 emulation (hooks vs. unpadded rows + MLP-only pad
rows), connector written from the state dict, stock diffusers scheduler and UniPic2's [refs, target]
token order. Agreement pins the whole docs/inference.md#inference path at once."""
import pytest
import torch

from bench.reference_loop import ReferenceDeepGen
from deepgen_model import DeepGenPipeline


@pytest.fixture(scope="module")
def pair(tiny_layouts):
    release = tiny_layouts["diffusers"]
    return DeepGenPipeline.from_pretrained(release, dtype="fp32", device="cpu"), ReferenceDeepGen(release)


def test_text_to_image_matches_reference_loop(pair):
    pipe, ref = pair
    # different prompt lengths: the negative row is left-padded, so pad rows matter
    ours = pipe("a red cat sitting on a blue mat", "blurry", width=48, height=32, steps=3, cfg_scale=4.0, seed=5)
    lat, img = ref.generate("a red cat sitting on a blue mat", "blurry", width=48, height=32, steps=3, cfg=4.0, seed=5)
    torch.testing.assert_close(ours.latents, lat, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(ours.images, img, atol=2e-4, rtol=1e-4)


def test_edit_with_two_references_matches_reference_loop(pair):
    pipe, ref = pair
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(80, 128, 3, generator=g), torch.rand(64, 64, 3, generator=g)]
    ours = pipe("put the cat into the scene", "blurry, low quality", images=images, width=64, height=64, steps=2,
                seed=9, max_side=96)
    lat, img = ref.generate("put the cat into the scene", "blurry, low quality", images=images, width=64, height=64,
                            steps=2, seed=9, max_side=96)
    torch.testing.assert_close(ours.latents, lat, atol=2e-4, rtol=1e-4)


def test_cfg_at_most_one_is_a_single_conditional_pass(pair):
    pipe, ref = pair
    ours = pipe("a lighthouse", width=32, height=32, steps=2, cfg_scale=1.0, seed=1)
    lat, _ = ref.generate("a lighthouse", width=32, height=32, steps=2, cfg=1.0, seed=1)
    torch.testing.assert_close(ours.latents, lat, atol=2e-4, rtol=1e-4)
