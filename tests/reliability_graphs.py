"""Graphs and checks shared by the in-process reliability tests (tests/integration/test_reliability_*.py):
a tiny-release text-to-image or edit graph, the picture of a run, the execution error of a node."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

RELEASE = "DeepGen-1.0-diffusers"
SIZE, STEPS = 32, 1  # small and one step: the graphs, not the pictures, are under test


def loaders() -> dict:
    return {"1": {"class_type": "DeepGenCheckpointLoader",
                  "inputs": {"ckpt_name": RELEASE, "vlm_base": "none", "dit_base": "none", "weight_dtype": "fp32",
                             "quantization": "none", "attention": "sdpa"}}}


def tail(latent, seed=7, steps=STEPS, cfg=4.0, positive=("3", 0), negative=("3", 1)) -> dict:
    return {"5": {"class_type": "DeepGenSampler",
                  "inputs": {"model": ["1", 0], "positive": list(positive), "negative": list(negative),
                             "latent": list(latent), "seed": seed, "steps": steps, "cfg": cfg}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 3]}},
            "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}}}


def t2i(prompt="a red cat", negative="", width=SIZE, height=SIZE, latent_node="EmptySD3LatentImage", **kw) -> dict:
    return {**loaders(),
            "3": {"class_type": "DeepGenTextEncode",
                  "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "prompt": prompt, "negative_prompt": negative}},
            "4": {"class_type": latent_node, "inputs": {"width": width, "height": height, "batch_size": 1}},
            **tail(("4", 0), **kw)}


def edit(images: list[str], max_side=SIZE, width=SIZE, height=SIZE, prompt="make it blue", **kw) -> dict:
    g = {**loaders(),
         "3": {"class_type": "DeepGenEditEncode",
               "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "vae": ["1", 3], "prompt": prompt, "negative_prompt": "",
                          "max_side": max_side, "width": width, "height": height}},
         **tail(("3", 2), **kw)}
    for i, name in enumerate(images, start=1):
        g[f"i{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        g["3"]["inputs"][f"image{i}"] = [f"i{i}", 0]
    return g


def output(comfy, node):
    return comfy.node_output(node)


def image_of(comfy, prompt) -> torch.Tensor:
    ok, _, msgs = comfy.run(prompt)
    assert ok, repr(msgs)[-3000:]
    img = output(comfy, "6")[0][0][0]  # socket 0, first list item, first image of the batch
    assert_real_picture(img)
    return img


def assert_real_picture(img: torch.Tensor):
    assert torch.isfinite(img).all()
    assert img.std() > 0.02 and img.max() > 0.05, f"flat/black output: std {img.std():.4f} max {img.max():.4f}"


def error_of(comfy, prompt, node: str) -> str:
    ok, _, msgs = comfy.run(prompt)
    assert not ok
    errors = [d for kind, d in msgs if kind == "execution_error"]
    assert errors, msgs
    assert errors[0]["node_id"] == node, errors[0]
    assert "InterruptProcessing" not in errors[0]["exception_type"]
    return errors[0]["exception_message"]


def save_png(comfy_base, name: str, arr: np.ndarray, mode: str | None = None):
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(comfy_base / "input" / name)
    return name
