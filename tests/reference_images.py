"""Test-side reference implementations shared by the unit tests (tests/unit/test_images.py, test_conditioning.py)."""
import torch

from deepgen_model.images import resized_uint8, to_signed


def resize_reference(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """A reference as the encode prepares it for the VAE: resized uint8, then [3, h, w] in [-1, 1]."""
    return to_signed(resized_uint8(image, max_side))
