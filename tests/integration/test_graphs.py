"""Whole graphs through the real server's POST /prompt: PNG pixels equal the engine's image (8 bits, ±1).

The engine side is deepgen_model.pipeline.DeepGenPipeline on the same tiny release, same seed/steps/cfg,
quantised the way core SaveImage does it (clip(255 x) truncated to uint8).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


RELEASE = "DeepGen-1.0-diffusers"
SEED = 0xDEADBEEFCAFE  # beyond 32 bits: seeds are full 64-bit
STEPS, CFG = 3, 4.0
NEGATIVE = "blurry"
REFS = {"graph_ref_a.png": (100, 50), "graph_ref_b.png": (40, 72)}  # (width, height)


@pytest.fixture(scope="module")
def pipeline(release):
    from deepgen_model.pipeline import DeepGenPipeline

    return DeepGenPipeline.from_pretrained(release, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def refs(comfy_base) -> dict:
    g = np.random.default_rng(1)
    out = {}
    for name, (w, h) in REFS.items():
        arr = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(comfy_base / "input" / name)
        out[name] = torch.from_numpy(arr.astype(np.float32) / 255.0)  # what LoadImage makes of the PNG
    return out


def as_saved(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE row -> the uint8 pixels core SaveImage writes."""
    return np.clip(255.0 * images[0].cpu().numpy(), 0, 255).astype(np.uint8)


def png(server, entry: dict, node: str) -> np.ndarray:
    (image,) = entry["outputs"][node]["images"]
    path = server.base / "output" / image["subfolder"] / image["filename"]
    return np.asarray(Image.open(path).convert("RGB"))


def assert_pixels_match(got: np.ndarray, want: np.ndarray):
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, f"max pixel difference {diff.max()} (mean {diff.mean():.4f})"
    assert want.std() > 5  # a real picture, not a flat (black) one


def sample_and_save(prefix: str, model, positive, negative, latent, vae) -> dict:
    return {
        "20": {"class_type": "DeepGenSampler",
               "inputs": {"model": model, "positive": positive, "negative": negative, "latent": latent,
                          "seed": SEED, "steps": STEPS, "cfg": CFG}},
        "21": {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0], "vae": vae}},
        "22": {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": prefix}},
    }


def t2i_checkpoint_graph(prompt: str) -> dict:
    return {
        "1": {"class_type": "DeepGenCheckpointLoader",
              "inputs": {"ckpt_name": RELEASE, "vlm_base": "none", "dit_base": "none", "weight_dtype": "fp32",
                         "quantization": "none", "attention": "sdpa"}},
        "2": {"class_type": "DeepGenTextEncode",
              "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "prompt": prompt, "negative_prompt": NEGATIVE}},
        "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        **sample_and_save("t2i_ckpt", ["1", 0], ["2", 0], ["2", 1], ["3", 0], ["1", 3]),
    }


def separate_loaders() -> dict:
    return {
        "10": {"class_type": "DeepGenVLMLoader",
               "inputs": {"vlm_name": RELEASE, "weight_dtype": "fp32", "quantization": "none", "attention": "sdpa"}},
        "11": {"class_type": "DeepGenSCBLoader", "inputs": {"scb_name": RELEASE, "weight_dtype": "fp32"}},
        "12": {"class_type": "DeepGenDiTLoader", "inputs": {"dit_name": RELEASE, "dit_base": "none",
                                                            "weight_dtype": "fp32"}},
        "13": {"class_type": "DeepGenVAELoader", "inputs": {"vae_name": RELEASE}},
    }


def test_t2i_checkpoint_graph_equals_engine(comfy_server, pipeline):
    prompt = "a red cat on a blue mat"
    entry = comfy_server.run(t2i_checkpoint_graph(prompt))
    want = pipeline(prompt, NEGATIVE, width=64, height=64, steps=STEPS, cfg_scale=CFG, seed=SEED)
    assert_pixels_match(png(comfy_server, entry, "22"), as_saved(want.images))


def test_t2i_three_loaders_graph_equals_engine(comfy_server, pipeline):
    prompt = "a green house under a grey sky"
    graph = {**separate_loaders(),
             "2": {"class_type": "DeepGenTextEncode",
                   "inputs": {"vlm": ["10", 0], "scb": ["11", 0], "prompt": prompt, "negative_prompt": NEGATIVE}},
             "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
             **sample_and_save("t2i_loaders", ["12", 0], ["2", 0], ["2", 1], ["3", 0], ["13", 0])}
    entry = comfy_server.run(graph)
    want = pipeline(prompt, NEGATIVE, width=64, height=48, steps=STEPS, cfg_scale=CFG, seed=SEED)
    assert_pixels_match(png(comfy_server, entry, "22"), as_saved(want.images))


def test_edit_two_references_graph_equals_engine(comfy_server, pipeline, refs):
    names = list(REFS)
    graph = {**separate_loaders(),
             "a": {"class_type": "LoadImage", "inputs": {"image": names[0]}},
             "b": {"class_type": "LoadImage", "inputs": {"image": names[1]}},
             "2": {"class_type": "DeepGenEditEncode",
                   "inputs": {"vlm": ["10", 0], "scb": ["11", 0], "vae": ["13", 0], "prompt": "swap their colours",
                              "negative_prompt": NEGATIVE, "image1": ["a", 0], "image2": ["b", 0], "max_side": 64,
                              "width": 48, "height": 64}},
             **sample_and_save("edit2", ["12", 0], ["2", 0], ["2", 1], ["2", 2], ["13", 0])}
    entry = comfy_server.run(graph)
    got = png(comfy_server, entry, "22")
    assert got.shape == (64, 48, 3)  # several references: the width/height inputs
    want = pipeline("swap their colours", NEGATIVE, images=[refs[n] for n in names], width=48, height=64,
                    steps=STEPS, cfg_scale=CFG, seed=SEED, max_side=64)
    assert_pixels_match(got, as_saved(want.images))
