"""Reliability (issue 7): unusual inputs through whole graphs in a real ComfyUI (in-process executor).

Every case ends in a correct image (finite, not constant: never a black picture) or in a validation /
execution error that names the offending input. Pixels are read from ComfyUI's output cache of the
VAEDecode node, so nothing is written to disk.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reliability_graphs import RELEASE, SIZE, assert_real_picture, edit, error_of, image_of, output, save_png, t2i


@pytest.fixture(scope="module")
def comfy(comfy_inprocess, release):  # the session's tiny release is the RELEASE the graphs load
    return comfy_inprocess


# ------------------------------------------------------------------ prompts

def notes_of(comfy, prompt) -> dict:
    """{node id: deepgen_warnings} of a run that must succeed (a note is advice, never an error)."""
    ok, outputs, msgs = comfy.run(prompt)
    assert ok, repr(msgs)[-3000:]
    assert_real_picture(output(comfy, "6")[0][0][0])
    return {node: ui["deepgen_warnings"] for node, ui in outputs.items() if "deepgen_warnings" in ui}


def test_empty_prompt_runs_with_a_note_on_the_encode_node(comfy):
    from deepgen_model.conditioning import empty_prompt_warning

    notes = notes_of(comfy, t2i(prompt="  ", negative=""))
    assert notes == {"3": [empty_prompt_warning("prompt", "", edit=False)], "5": []}
    assert notes["3"][0].startswith("prompt is empty: DeepGen gets no description") and "write what you want" in notes["3"][0]
    assert notes_of(comfy, t2i(prompt="a red cat", negative="")) == {"3": [], "5": []}


def test_empty_edit_instruction_runs_with_a_note_on_the_encode_node(comfy, comfy_base):
    name = save_png(comfy_base, "h21_empty_edit.png", np.random.default_rng(21).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    notes = notes_of(comfy, edit([name], prompt=""))
    assert notes["3"] == ["prompt is empty: DeepGen gets no edit instruction, so the picture may come back little "
                          "changed; say what should change"]


@pytest.mark.parametrize("cfg, noted", [(100.0, True), (10.5, True), (10.0, False), (4.0, False), (0.0, False)])
def test_extreme_cfg_runs_with_a_note_on_the_sampler(comfy, cfg, noted):
    notes = notes_of(comfy, t2i(prompt=f"a red cat, cfg {cfg}", cfg=cfg))
    if noted:
        assert notes["5"] == [f"cfg is {cfg:g}, far above the 3.5-7.5 the authors use (4.0 by default): expect harsh, "
                              "oversaturated, burnt-looking pictures; try 4"]
    else:
        assert notes["5"] == []


@pytest.mark.parametrize("text", ["猫がマットの上に座っている、写真", "🐱🎨✨ un café très chaud — naïve façade",
                                  "Ελληνικά и русский 한국어 العربية עברית", "tab\tnew\nline  and   spaces"])
def test_non_ascii_prompts_are_encoded_exactly(comfy, text):
    img = image_of(comfy, t2i(prompt=text))
    positive = output(comfy, "3")[0][0]
    assert positive[0][1]["deepgen_prompt"].endswith(f"Generate an image: {text}<|im_end|>\n<|im_start|>assistant\n")
    tokenizer = output(comfy, "1")[1][0].model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level BPE: nothing replaced by an unknown token
    ascii_img = image_of(comfy, t2i(prompt="cat on a mat"))
    assert not torch.equal(img, ascii_img)


@pytest.mark.parametrize("which", ["prompt", "negative_prompt"])
def test_lone_surrogate_names_the_input(comfy, which):
    """Issue 20: "\\ud800" in JSON is a lone surrogate, which no tokenizer takes (it was a raw TypeError)."""
    prompt = t2i(**{"prompt" if which == "prompt" else "negative": "a cat \ud800 on a mat"})
    msg = error_of(comfy, prompt, "3")
    assert msg.startswith(f"{which} contains an unpaired surrogate (U+D800 at character 7)"), msg
    image_of(comfy, t2i(prompt="a cat \u00e9 on a mat"))  # real characters, and the next prompt, work


def test_long_prompt_is_encoded_in_full(comfy):
    words = " ".join(f"detail{i}" for i in range(700))  # > 1024 tokens: past the training length, still encoded
    image_of(comfy, t2i(prompt=words))
    seq = output(comfy, "3")[0][0][0][0]
    tokenizer = output(comfy, "1")[1][0].model.tokenizer
    n = len(tokenizer(positive_text := output(comfy, "3")[0][0][0][1]["deepgen_prompt"])["input_ids"])
    assert positive_text.count("detail") == 700 and n > 1024
    think = output(comfy, "1")[2][0].model.meta_queries.shape[0]
    assert seq.shape[1] == n + think  # every prompt token is there: nothing truncated


@pytest.mark.parametrize("which", ["prompt", "negative_prompt"])
def test_prompt_longer_than_the_vlm_context_is_refused(comfy, which):
    text = "x " * 130_000  # the tiny VLM keeps the release's max_position_embeddings (128000)
    prompt = t2i(**{"prompt" if which == "prompt" else "negative": text})
    msg = error_of(comfy, prompt, "3")
    assert msg.startswith(which) and "128000" in msg and "refused, not truncated" in msg


# ------------------------------------------------------------------ sizes

def fixed_node(comfy) -> list[str]:
    """The nodes the sampler asked the web extension to outline in the last run."""
    return [data["node"] for event, data in comfy.events if event == "deepgen.fix_node"]


FIX_SIZE = "set its width and height to {}, the nearest size DeepGen can make."


@pytest.mark.parametrize("node, width, height, nearest", [("EmptyLatentImage", 72, 64, "80x64"),
                                                           ("EmptySD3LatentImage", 64, 40, "64x48"),
                                                           ("EmptyLatentImage", 24, 16, "32x16")])
def test_latent_sides_not_multiples_of_16_name_the_size_node_and_the_nearest_size(comfy, node, width, height,
                                                                                    nearest):
    msg = error_of(comfy, t2i(latent_node=node, width=width, height=height), "5").strip()
    assert msg == (f"{node} (node 4) asks for a {width}x{height} px image, but DeepGen needs both sides in steps "
                   f"of 16 px: " + FIX_SIZE.format(nearest))
    assert fixed_node(comfy) == ["4"]


def test_the_issue_case_names_the_titled_size_node_and_offers_the_nearest_size(comfy, tiny):
    """5008x5008 on the tiny DiT (at most 1024 px): the size node by its title, and 1024x1024, never the size
    that failed (the old message suggested "e.g. 5008x5008 within 1024 px")."""
    prompt = t2i(width=5008, height=5008)
    prompt["4"]["_meta"] = {"title": "Image size"}
    msg = error_of(comfy, prompt, "5").strip()
    assert msg == ('"Image size" (EmptySD3LatentImage, node 4) asks for a 5008x5008 px image, but DeepGen makes at '
                   "most 1024 px per side: " + FIX_SIZE.format("1024x1024"))
    assert "5008x5008 within" not in msg and "patch" not in msg and "latent sides" not in msg
    assert fixed_node(comfy) == ["4"]


def test_encoded_image_of_odd_size_names_the_encoder(comfy, comfy_base):
    g = np.random.default_rng(3)
    name = save_png(comfy_base, "h13_odd.png", g.integers(0, 256, (56, 104, 3), dtype=np.uint8))
    prompt = t2i()
    prompt["i"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    prompt["4"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["i", 0], "vae": ["1", 3]}}
    msg = error_of(comfy, prompt, "5").strip()
    assert msg == ("VAEEncode (node 4) asks for a 104x56 px image, but DeepGen needs both sides in steps of 16 px: "
                   "give it a picture DeepGen can take: 112x64 px is the nearest (e.g. resize it with Upscale Image).")


def test_sizes_that_are_multiples_of_16_work(comfy):
    img = image_of(comfy, t2i(width=80, height=48, latent_node="EmptyLatentImage"))
    assert img.shape == (48, 80, 3)
    assert fixed_node(comfy) == []


def test_size_beyond_the_position_table_is_refused(comfy, tiny):
    limit = tiny.dit.config.pos_embed_max_size * tiny.dit.config.patch_size * 8  # 1024 px for the tiny DiT
    msg = error_of(comfy, t2i(width=limit + 16, height=64), "5").strip()
    assert msg == (f"EmptySD3LatentImage (node 4) asks for a {limit + 16}x64 px image, but DeepGen makes at most "
                   f"{limit} px per side: " + FIX_SIZE.format(f"{limit}x64"))


def test_reference_beyond_the_position_table_names_the_encoder_and_max_side(comfy, comfy_base, tiny):
    limit = tiny.dit.config.pos_embed_max_size * tiny.dit.config.patch_size * 8
    g = np.random.default_rng(4)
    name = save_png(comfy_base, "h13_wide.png", g.integers(0, 256, (64, limit + 100, 3), dtype=np.uint8))
    msg = error_of(comfy, edit([name, name], max_side=limit + 32), "5").strip()
    assert msg == (f"DeepGenEditEncode (node 3) gives a {limit + 32}x64 px reference picture, but DeepGen makes at "
                   f"most {limit} px per side: set its max_side to {limit} or less.")
    assert fixed_node(comfy) == ["3"]


# ------------------------------------------------------------------ reference images

@pytest.fixture(scope="module")
def refs(comfy_base) -> dict:
    """PNGs as users have them: RGB, grayscale, grayscale+alpha, RGBA, palette, 16-bit grayscale."""
    g = np.random.default_rng(5)
    rgb = g.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    gray = g.integers(0, 256, (48, 32), dtype=np.uint8)
    names = {
        "rgb": save_png(comfy_base, "h13_rgb.png", rgb),
        "gray": save_png(comfy_base, "h13_gray.png", gray),
        "gray_alpha": save_png(comfy_base, "h13_la.png", rgb, "LA"),
        "rgba": save_png(comfy_base, "h13_rgba.png", np.dstack([rgb, g.integers(0, 256, (40, 56), dtype=np.uint8)])),
        "palette": save_png(comfy_base, "h13_p.png", rgb, "P"),
    }
    Image.fromarray((gray.astype(np.uint16) * 257)).save(comfy_base / "input" / "h13_gray16.png")  # mode I;16
    names["gray16"] = "h13_gray16.png"
    return names


@pytest.mark.parametrize("kind", ["rgb", "gray", "gray_alpha", "rgba", "palette", "gray16"])
def test_reference_image_modes(comfy, refs, kind):
    img = image_of(comfy, edit([refs[kind]]))
    assert img.shape[0] % 16 == 0 and img.shape[1] % 16 == 0 and max(img.shape[:2]) == SIZE, img.shape


def test_no_reference_is_a_validation_error_naming_image1(comfy):
    valid, error, _, node_errors = comfy.validate(edit([]))
    assert not valid and "3" in node_errors
    assert "image1" in repr(node_errors["3"])


def test_four_references_of_different_sizes(comfy, refs):
    img = image_of(comfy, edit([refs["rgb"], refs["gray"], refs["rgba"], refs["palette"]], width=48, height=32))
    assert img.shape == (32, 48, 3)
    assert len(output(comfy, "3")[0][0][0][1]["reference_latents"]) == 4


def test_a_batch_in_one_reference_input_names_it(comfy, refs):
    prompt = edit([refs["rgb"], refs["gray"]])
    prompt["b"] = {"class_type": "ImageBatch", "inputs": {"image1": ["i1", 0], "image2": ["i2", 0]}}
    prompt["3"]["inputs"]["image2"] = ["b", 0]  # two differently sized images, batched (ImageBatch rescales)
    msg = error_of(comfy, prompt, "3")
    assert msg.startswith("image2 holds 2 images")


# ------------------------------------------------------------------ cfg and steps

def test_cfg_at_most_one_and_a_single_step(comfy):
    at_one = image_of(comfy, t2i(prompt="a blue boat", cfg=1.0))
    at_zero = image_of(comfy, t2i(prompt="a blue boat", cfg=0.0))
    guided = image_of(comfy, t2i(prompt="a blue boat", cfg=4.0))
    assert torch.equal(at_one, at_zero)  # both run the conditional branch only
    assert not torch.equal(at_one, guided)
    two_steps = image_of(comfy, t2i(prompt="a blue boat", cfg=4.0, steps=2))
    assert not torch.equal(two_steps, guided)  # STEPS = 1 everywhere else: one step is a complete sample
