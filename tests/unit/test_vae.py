"""SD3 VAE helpers (docs/inference.md#vae, #decode, #pitfall-11) on the tiny AutoencoderKL."""
from types import SimpleNamespace

import pytest
import torch

from deepgen_model import tiny as deepgen_tiny
from deepgen_model.errors import DeepGenInputError
from deepgen_model.vae import decode, encode_reference, latent_scale_shift


@pytest.fixture(scope="module")
def vae():
    return deepgen_tiny.build_vae(0)


def test_scale_and_shift_from_config_with_constant_fallback(vae):
    assert latent_scale_shift(vae) == (1.5305, 0.0609)
    assert latent_scale_shift(SimpleNamespace(config={})) == (1.5305, 0.0609)
    assert latent_scale_shift(SimpleNamespace(config={"scaling_factor": 0.5, "shift_factor": None})) == (0.5, 0.0609)


@torch.no_grad()
def test_decode_maps_to_comfy_image(vae):
    z = torch.randn(2, 16, 2, 3, generator=torch.Generator().manual_seed(0))
    img = decode(vae, z)
    assert img.shape == (2, 16, 24, 3) and img.dtype == torch.float32 and img.device.type == "cpu"
    raw = vae.decode(z / 1.5305 + 0.0609).sample
    expected = ((raw + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(img, expected, atol=1e-6, rtol=0)
    assert img.min() >= 0 and img.max() <= 1
    wrong = ((vae.decode(z).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert (img - wrong).abs().max() > 1e-3  # the latent normalisation matters


@torch.no_grad()
def test_encode_reference_uses_the_posterior_mean(vae):
    pixels = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = encode_reference(vae, pixels)
    assert z.shape == (16, 2, 3) and z.dtype == torch.float32
    dist = vae.encode(pixels[None]).latent_dist
    torch.testing.assert_close(z, (dist.mean[0] - 0.0609) * 1.5305, atol=1e-6, rtol=0)
    assert torch.equal(encode_reference(vae, pixels), z)  # deterministic: no RNG involved
    torch.manual_seed(0)
    drawn = (dist.sample()[0] - 0.0609) * 1.5305
    assert (drawn - z).abs().max() > 1e-4  # the official .sample() path would differ


def test_encode_reference_validates_input(vae):
    with pytest.raises(DeepGenInputError, match=r"\[3, h, w\]"):
        encode_reference(vae, torch.zeros(1, 3, 32, 32))
    with pytest.raises(DeepGenInputError, match="multiples of 8"):
        encode_reference(vae, torch.zeros(3, 30, 32))
    with pytest.raises(DeepGenInputError):
        decode(vae, torch.zeros(16, 4, 4))
