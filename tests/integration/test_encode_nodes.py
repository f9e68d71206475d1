"""DeepGenTextEncode / DeepGenEditEncode in a real ComfyUI, against the engine run directly."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image


RELEASE = "DeepGen-1.0-diffusers"
PROMPT, NEGATIVE = "a red cat sitting on a blue mat, photo", "blurry"
SIZES = {"ref_a.png": (100, 50), "ref_b.png": (40, 72)}  # (width, height)


@pytest.fixture(scope="module")
def ref_images(comfy_base) -> dict:
    """Reference PNGs in the server's input folder -> the IMAGE rows LoadImage makes of them."""
    g = np.random.default_rng(0)
    out = {}
    for name, (w, h) in SIZES.items():
        arr = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(comfy_base / "input" / name)
        out[name] = torch.from_numpy(arr.astype(np.float32) / 255.0)
    return out


@pytest.fixture(scope="module")
def engine(release):
    """The engine's own objects, loaded from the same release at fp32 (what the graphs below use)."""
    from deepgen_model.loading import load_scb, load_vae
    from deepgen_model.vlm_loading import load_vlm

    vlm, tokenizer = load_vlm(release, dtype="fp32")
    return vlm, tokenizer, load_scb(release, dtype="fp32"), load_vae(release, dtype="fp32")


def loaders(dtype="fp32") -> dict:
    return {
        "1": {"class_type": "DeepGenVLMLoader",
              "inputs": {"vlm_name": RELEASE, "weight_dtype": dtype, "quantization": "none", "attention": "sdpa"}},
        "2": {"class_type": "DeepGenSCBLoader", "inputs": {"scb_name": RELEASE, "weight_dtype": dtype}},
    }


def text_graph(prompt=PROMPT, negative=NEGATIVE) -> dict:
    return {**loaders(),
            "3": {"class_type": "DeepGenTextEncode",
                  "inputs": {"vlm": ["1", 0], "scb": ["2", 0], "prompt": prompt, "negative_prompt": negative}},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
            "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}}


def edit_graph(names, max_side=64, width=64, height=48, negative=NEGATIVE) -> dict:
    g = {**loaders(),
         "9": {"class_type": "DeepGenVAELoader", "inputs": {"vae_name": RELEASE}},
         "3": {"class_type": "DeepGenEditEncode",
               "inputs": {"vlm": ["1", 0], "scb": ["2", 0], "vae": ["9", 0], "prompt": "make it blue",
                          "negative_prompt": negative, "max_side": max_side, "width": width, "height": height}},
         "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}}
    for i, name in enumerate(names, start=1):
        g[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        g["3"]["inputs"][f"image{i}"] = [f"img{i}", 0]
    return g


def outputs(comfy, node_id):
    return comfy.node_output(node_id)


def run_ok(comfy, prompt):
    success, _, messages = comfy.run(prompt)
    assert success, repr(messages)[:4000]


def run_error(comfy, prompt) -> str:
    success, _, messages = comfy.run(prompt)
    assert not success
    return repr(messages)


# ------------------------------------------------------------------ text encode

def test_text_encode_equals_engine_encode(comfy_inprocess, release, engine):
    from deepgen_model.conditioning import encode

    run_ok(comfy_inprocess, text_graph())
    (positive,), (negative,) = outputs(comfy_inprocess, "3")
    vlm, tokenizer, scb, _ = engine
    ref = encode(vlm, tokenizer, scb, PROMPT, NEGATIVE)
    for (cond,), row in ((positive, 0), (negative, 1)):
        seq, info = cond
        assert torch.equal(seq, ref.seq[row:row + 1]), (seq - ref.seq[row:row + 1]).abs().max()
        assert torch.equal(info["pooled_output"], ref.pooled[row:row + 1])
        assert info["deepgen_prompt"] == ref.prompt_text[row]
        assert "reference_latents" not in info
    # one joint encode: the shorter negative carries the shared left padding, so both have one length
    assert positive[0][0].shape == negative[0][0].shape
    assert negative[0][1]["deepgen_prompt"].endswith("Generate an image: blurry<|im_end|>\n<|im_start|>assistant\n")
    # docs/inference.md#pitfall-1: encoding the negative alone (no padding) gives a different conditioning
    alone = encode(vlm, tokenizer, scb, NEGATIVE, NEGATIVE)
    assert alone.seq.shape[1] < negative[0][0].shape[1]


def test_models_are_managed_by_comfyui(comfy_inprocess, release):
    """The loaders' outputs are ModelPatchers that ComfyUI's model management loads and unloads."""
    mm = sys.modules["comfy.model_management"]
    run_ok(comfy_inprocess, text_graph(prompt="managed"))
    vlm, scb = outputs(comfy_inprocess, "1")[0][0], outputs(comfy_inprocess, "2")[0][0]
    loaded = mm.loaded_models()
    assert scb in loaded  # loaded through mm.load_models_gpu by the encode node
    assert vlm in loaded or vlm.load_device != vlm.offload_device  # on a GPU it is moved off again at once
    mm.unload_all_models()  # what "Unload models" / POST /free do
    assert vlm not in mm.loaded_models() and scb not in mm.loaded_models()


def test_vlm_moved_off_the_load_device_after_encoding(comfy_inprocess, release, monkeypatch):
    """With a load device distinct from the offload device (cpu:0 stands in for a GPU here), the encode
    node unloads the VLM right after encoding so the DiT gets the room; the SCB stays loaded."""
    mm = sys.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "text_encoder_device", lambda: torch.device("cpu", 0))
    try:
        success, _, messages = comfy_inprocess.run(text_graph(prompt="offload"), fresh=True)
        assert success, repr(messages)[:4000]
        vlm, scb = outputs(comfy_inprocess, "1")[0][0], outputs(comfy_inprocess, "2")[0][0]
        assert vlm.load_device == torch.device("cpu", 0) and vlm.offload_device == torch.device("cpu")
        assert scb in mm.loaded_models() and vlm not in mm.loaded_models()
        assert vlm.model.device == torch.device("cpu")
    finally:
        mm.unload_all_models()
        comfy_inprocess.executor.reset()  # drop patchers built with the patched device


# ------------------------------------------------------------------ edit encode

def test_edit_encode_two_references(comfy_inprocess, release, ref_images, engine, monkeypatch):
    from deepgen_model.conditioning import encode
    from deepgen_model.images import image_token_count, reference_size, resized_uint8
    from deepgen_model.vae import encode_reference

    names = list(SIZES)
    resizes = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, *a, **k: (resizes.append(im.size), resize(im, *a, **k))[1])
    success, _, messages = comfy_inprocess.run(edit_graph(names, max_side=64, width=64, height=48), fresh=True)
    assert success, repr(messages)[:4000]
    assert resizes == list(SIZES.values())  # each reference is resized once, for both the VLM and the VAE
    monkeypatch.undo()
    (positive,), (negative,), (latent,) = outputs(comfy_inprocess, "3")
    comfy_vae = outputs(comfy_inprocess, "9")[0][0]
    vlm, tokenizer, scb, vae = engine
    images = [ref_images[n] for n in names]
    ref = encode(vlm, tokenizer, scb, "make it blue", NEGATIVE, images, max_side=64)
    sizes = [reference_size(w, h, 64) for w, h in SIZES.values()]  # (64, 32) and (32, 64)
    tokens = sum(image_token_count(h, w) for w, h in sizes)
    for (cond,), row in ((positive, 0), (negative, 1)):
        seq, info = cond
        assert torch.equal(seq, ref.seq[row:row + 1]) and torch.equal(info["pooled_output"], ref.pooled[row:row + 1])
        assert info["deepgen_prompt"] == ref.prompt_text[row]
        assert info["deepgen_prompt"].count("<|image_pad|>") == tokens
        lats = info["reference_latents"]
        assert [tuple(x.shape) for x in lats] == [(1, 16, h // 8, w // 8) for w, h in sizes]
        for raw, pixels, image in zip(lats, ref.references, images):  # raw VAE space, as ReferenceLatent stores it
            normalised = (raw[0] - 0.0609) * 1.5305
            torch.testing.assert_close(normalised, encode_reference(vae, pixels), rtol=1e-4, atol=1e-4)
            resized = torch.tensor(resized_uint8(image, 64), dtype=torch.float32)[None] / 255.0
            with torch.inference_mode():  # as ComfyUI runs nodes
                assert torch.equal(raw, comfy_vae.encode(resized))  # exactly the VAE encode of the resized picture
    assert positive[0][1]["reference_latents"] is not negative[0][1]["reference_latents"]
    assert all(torch.equal(a, b) for a, b in zip(positive[0][1]["reference_latents"],
                                                  negative[0][1]["reference_latents"]))
    assert tuple(latent["samples"].shape) == (1, 16, 48 // 8, 64 // 8)  # several refs: the width/height inputs
    assert not latent["samples"].any()


def test_edit_encode_one_reference_sets_output_size(comfy_inprocess, release, ref_images):
    run_ok(comfy_inprocess, edit_graph(["ref_a.png"], max_side=64, width=512, height=512))
    latent = outputs(comfy_inprocess, "3")[2][0]
    assert tuple(latent["samples"].shape) == (1, 16, 32 // 8, 64 // 8)  # 100x50 -> 64x32, widgets ignored
    (positive,) = outputs(comfy_inprocess, "3")[0]
    assert len(positive[0][1]["reference_latents"]) == 1


def test_edit_encode_default_negative_is_the_long_edit_negative(comfy_inprocess):
    from deepgen_model.constants import EDIT_NEGATIVE

    info = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["DeepGenEditEncode"].INPUT_TYPES()
    assert info["required"]["negative_prompt"][1]["default"] == EDIT_NEGATIVE
    assert info["required"]["max_side"][1]["default"] == 512 and info["required"]["max_side"][1]["step"] == 32


def test_edit_encode_errors_name_the_input(comfy_inprocess, release, ref_images):
    text = run_error(comfy_inprocess, edit_graph(["ref_a.png"], max_side=80))
    assert "max_side must be a positive multiple of 32, got 80." in text
    batch = edit_graph(["ref_a.png"])
    batch["rep"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["img1", 0], "amount": 2}}
    batch["3"]["inputs"]["image1"] = ["rep", 0]
    assert "image1 holds 2 images" in run_error(comfy_inprocess, batch)
    two = edit_graph(list(SIZES), width=72)
    assert "width must be a positive multiple of 16" in run_error(comfy_inprocess, two)
    node = comfy_inprocess.nodes.NODE_CLASS_MAPPINGS["DeepGenEditEncode"]
    with pytest.raises(ValueError, match="image1 is empty"):
        node.execute(None, None, None, "p", "n", torch.zeros(0, 64, 64, 3), 512, 512, 512)


# ------------------------------------------------------------------ caching

def test_requeue_with_new_seed_reuses_the_encode(comfy_server, release):
    def graph(seed):
        return {**text_graph(prompt="cache me"),
                "6": {"class_type": "DeepGenDiTLoader",
                      "inputs": {"dit_name": RELEASE, "dit_base": "none", "weight_dtype": "fp32"}},
                "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "8": {"class_type": "DeepGenSampler",
                      "inputs": {"model": ["6", 0], "positive": ["3", 0], "negative": ["3", 1], "latent": ["7", 0],
                                 "seed": seed, "steps": 2, "cfg": 4.0}},
                "4": {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}}}

    first = comfy_server.ws_run(graph(1))
    assert "execution_success" in first.types, first.events[-3:]
    second = comfy_server.ws_run(graph(2))
    assert "execution_success" in second.types, second.events[-3:]
    cached = set(second.of("execution_cached")[0]["nodes"])
    assert {"1", "2", "3", "6", "7"} <= cached
    executed = {d["node"] for d in second.of("executing") if d.get("node")}
    assert "8" in executed and "3" not in executed


@pytest.mark.parametrize("refs", [0, 1, 2])
def test_progress_moves_through_every_stage(comfy_inprocess, release, ref_images, refs, monkeypatch):
    """The encode node's bar moves after loading, every ViT block, decoder layer and SCB layer, the unloading
    and each reference's VAE encode, and reaches its end only then (it used to sit at 100 % from the last
    decoder layer through the SCB: ~40 s with real weights and a long prompt on a CPU)."""
    import comfy.utils

    from deepgen_model import tiny as deepgen_tiny
    from deepgen_model.constants import selected_layers

    # newer cores (0.33) send at most one update per 100 ms; the tiny model is faster: count what we report
    monkeypatch.setattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0, raising=False)

    names = sorted(SIZES)[:refs]
    graph = edit_graph(names, negative=f"progress {refs}") if refs else text_graph(negative="progress 0")
    run_ok(comfy_inprocess, graph)
    values = [(d["value"], d["max"]) for e, d in comfy_inprocess.events if e == "progress" and d.get("node") == "3"]
    steps = (refs * deepgen_tiny.TINY_VISION["depth"] + max(selected_layers(deepgen_tiny.TINY_TEXT["num_hidden_layers"]))
             + deepgen_tiny.TINY_CONNECTOR["num_hidden_layers"])
    total = 1 + steps + 1 + refs  # load, engine, unload, VAE encodes
    assert values == [(k, total) for k in range(1, total + 1)]
