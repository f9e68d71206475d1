"""Reliability (issue 13): damaged downloads, absurd configs and hostile inputs are refused up front, naming the
file or input, and the next valid prompt still gives the same picture.

Files and sampling inputs run through ComfyUI's executor in-process (pixels compared from its output cache);
the prompt_preview route and cfg=NaN through POST /prompt run against the real HTTP server, which must stay
healthy (answering, same results) after every hostile request.
"""
from __future__ import annotations

import json
import random
import shutil
import struct
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from deepgen_model import tiny as deepgen_tiny
from reliability_graphs import RELEASE, edit, error_of, image_of, save_png, t2i

SUB = "h13v"


@pytest.fixture(scope="module")
def comfy(comfy_inprocess, release):  # the session's tiny release is the RELEASE the graphs load
    return comfy_inprocess


@pytest.fixture(scope="module")
def reference(comfy):
    """The picture of a valid prompt before any incident (fresh executor)."""
    comfy.run({}, fresh=True)
    return image_of(comfy, t2i(prompt="a red cat", seed=11))


def same_picture_again(comfy, reference):
    assert torch.equal(image_of(comfy, t2i(prompt="a red cat", seed=11)), reference)


# ------------------------------------------------------------------ damaged files and configs

def _zero(f):
    f.write_bytes(b"")


def _header_length(n):
    def damage(f):
        f.write_bytes(struct.pack("<Q", n) + f.read_bytes()[8:])
    return damage


def _folder(f):
    f.unlink()
    f.mkdir()


def _config(**changes):
    def damage(f):
        cfg = json.loads(f.read_text())
        cfg.update(changes)
        f.write_text(json.dumps(cfg))
    return damage


def _text(text):
    def damage(f):
        f.write_text(text)
    return damage


LOADER_INPUTS = {
    "DeepGenSCBLoader": lambda name: {"scb_name": name, "weight_dtype": "fp32"},
    "DeepGenDiTLoader": lambda name: {"dit_name": name, "dit_base": "none", "weight_dtype": "fp32"},
    "DeepGenVLMLoader": lambda name: {"vlm_name": name, "weight_dtype": "fp32", "quantization": "none",
                                      "attention": "sdpa"},
    "DeepGenVAELoader": lambda name: {"vae_name": name},
    "DeepGenCheckpointLoader": lambda name: {"ckpt_name": name, "vlm_base": "none", "dit_base": "none",
                                             "weight_dtype": "fp32", "quantization": "none", "attention": "sdpa"},
}

CASES = [  # (case, loader node, damaged file, damage, component named, fragment)
    ("dit-empty", "DeepGenDiTLoader", "transformer/diffusion_pytorch_model.safetensors", _zero, "DiT", "is empty (0 bytes)"),
    ("dit-2e64", "DeepGenDiTLoader", "transformer/diffusion_pytorch_model.safetensors", _header_length(2**64 - 1),
     "DiT", "header claims 18446744073709551615 bytes"),
    ("dit-2e62", "DeepGenCheckpointLoader", "transformer/diffusion_pytorch_model.safetensors", _header_length(2**62),
     "DiT", "header claims 4611686018427387904 bytes"),
    ("dit-10g", "DeepGenDiTLoader", "transformer/diffusion_pytorch_model.safetensors", _header_length(10 << 30),
     "DiT", "header claims 10737418240 bytes"),
    ("vae-folder", "DeepGenVAELoader", "vae/diffusion_pytorch_model.safetensors", _folder, "VAE", "is a folder"),
    ("scb-empty", "DeepGenSCBLoader", "connector/model.safetensors", _zero, "SCB", "is empty"),
    ("vlm-2e62", "DeepGenVLMLoader", "vlm/model-00001-of-00002.safetensors", _header_length(2**62), "VLM",
     "header claims"),
    ("tok-not-json", "DeepGenVLMLoader", "tokenizer/tokenizer.json", _text("<html>404</html>"), "tokenizer",
     "is not valid JSON"),
    ("dit-layers", "DeepGenDiTLoader", "transformer/config.json", _config(num_layers=-1), "DiT", "num_layers is -1"),
    ("dit-posembed", "DeepGenCheckpointLoader", "transformer/config.json", _config(pos_embed_max_size=10**6), "DiT",
     "pos_embed_max_size is 1000000"),
    ("dit-list", "DeepGenDiTLoader", "transformer/config.json", _text("[1, 2]"), "DiT", "is a JSON list"),
    ("scb-heads-0", "DeepGenSCBLoader", "connector/config.json", _config(num_attention_heads=0), "SCB",
     "num_attention_heads is 0"),
    ("scb-heads-neg", "DeepGenCheckpointLoader", "connector/config.json", _config(num_attention_heads=-32), "SCB",
     "num_attention_heads is -32"),
    ("scb-heads-abc", "DeepGenSCBLoader", "connector/config.json", _config(num_attention_heads="abc"), "SCB",
     "num_attention_heads is \"abc\""),
    ("vlm-positions", "DeepGenVLMLoader", "vlm/config.json", _config(max_position_embeddings=0), "VLM",
     "max_position_embeddings is 0"),
    ("vlm-hidden", "DeepGenVLMLoader", "vlm/config.json", _config(hidden_size=10**9), "VLM", "hidden_size is 1000000000"),
]


@pytest.mark.parametrize("case, node, rel, damage, component, fragment", CASES, ids=[c[0] for c in CASES])
def test_damaged_file_names_file_component_and_fix(comfy, comfy_models, release, reference, case, node, rel, damage,
                                                   component, fragment):
    dst = comfy_models / "deepgen" / SUB / case
    if dst.exists():
        shutil.rmtree(dst)
    skip = () if node in ("DeepGenVLMLoader", "DeepGenCheckpointLoader") else ("vlm", "tokenizer")
    shutil.copytree(release, dst, ignore=shutil.ignore_patterns(*skip))
    damage(dst / rel)
    prompt = {"1": {"class_type": node, "inputs": LOADER_INPUTS[node](f"{SUB}/{case}")},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    msg = error_of(comfy, prompt, "1")
    assert msg.startswith((f"{component} file {dst / rel}:", f"{component} folder {(dst / rel).parent}:")), msg
    assert fragment in msg and "again" in msg, msg
    same_picture_again(comfy, reference)


# ------------------------------------------------------------------ sampling inputs

def _scheduler(steps) -> dict:
    return {"1": {"class_type": "DeepGenCheckpointLoader",
                  "inputs": LOADER_INPUTS["DeepGenCheckpointLoader"](RELEASE)},
            "s": {"class_type": "DeepGenScheduler", "inputs": {"model": ["1", 0], "steps": steps}},
            "p": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}}


@pytest.mark.parametrize("steps", [0, -1, 1_000_000])
def test_steps_out_of_range_are_refused_on_every_node(comfy, reference, steps):
    valid, _, _, errors = comfy.validate(_scheduler(steps))
    assert not valid and "steps" in repr(errors["s"]), errors
    valid, _, _, errors = comfy.validate(t2i(steps=steps))
    assert not valid and "steps" in repr(errors["5"]), errors
    # a linked value skips ComfyUI's validation: the node itself refuses it, naming the input
    for graph, node in ((_scheduler(["n", 0]), "s"), (t2i(steps=["n", 0]), "5")):
        graph["n"] = {"class_type": "PrimitiveInt", "inputs": {"value": steps}}
        msg = error_of(comfy, graph, node)
        assert msg.startswith(f"steps is {steps}") and "1..1000" in msg, msg
    same_picture_again(comfy, reference)


@pytest.mark.parametrize("cfg", [float("nan"), float("inf")])
def test_cfg_must_be_finite(comfy, reference, cfg):
    valid, _, _, errors = comfy.validate(t2i(cfg=cfg))
    assert not valid and "cfg" in repr(errors["5"]) and "finite" in repr(errors["5"]), errors
    graph = t2i(cfg=["f", 0])  # linked: the sampler itself refuses it (PrimitiveFloat refuses inf, passes NaN)
    graph["f"] = {"class_type": "PrimitiveFloat", "inputs": {"value": float("nan")}}
    msg = error_of(comfy, graph, "5")
    assert msg.startswith("cfg is") and "finite" in msg and "fp16" not in msg, msg
    same_picture_again(comfy, reference)


@pytest.mark.parametrize("token", ["<|image_pad|>", "<|video_pad|>"])
def test_image_tokens_in_prompts_name_the_prompt(comfy, comfy_base, reference, token):
    msg = error_of(comfy, t2i(prompt=f"a cat {token}"), "3")
    assert msg.startswith(f"prompt contains {token}"), msg
    msg = error_of(comfy, t2i(negative=f"{token} blurry"), "3")
    assert msg.startswith(f"negative_prompt contains {token}"), msg
    name = save_png(comfy_base, "h13v_ref.png", np.random.default_rng(8).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    msg = error_of(comfy, edit([name], prompt=f"make {token} blue"), "3")
    assert msg.startswith(f"prompt contains {token}"), msg
    same_picture_again(comfy, reference)


def test_typed_special_tokens_follow_the_official_tokenisation(comfy, reference):
    """<|im_end|> typed in a prompt is the special token (as in the release's own code), not refused."""
    image_of(comfy, t2i(prompt="a cat<|im_end|> on a mat"))
    tokenizer = comfy.node_output("1")[1][0].model.tokenizer
    assert tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"] == [deepgen_tiny.TINY_TOKEN_IDS["<|im_end|>"]]
    same_picture_again(comfy, reference)


def test_one_reference_beyond_the_position_table_names_max_side(comfy, comfy_base, tiny, reference):
    """The edit's latent takes the reference's size: the advice is max_side, not an empty latent it has none of."""
    limit = tiny.dit.config.pos_embed_max_size * tiny.dit.config.patch_size * 8
    name = save_png(comfy_base, "h13v_wide.png",
                    np.random.default_rng(9).integers(0, 256, (48, limit + 100, 3), dtype=np.uint8))
    msg = error_of(comfy, edit([name], max_side=limit + 32), "5").strip()
    assert msg.startswith("DeepGenEditEncode (node 3) gives a") and msg.endswith(
        f"but DeepGen makes at most {limit} px per side: set its max_side to {limit} or less."), msg
    same_picture_again(comfy, reference)


@pytest.mark.parametrize("node, widget", [("DeepGenCheckpointLoader", "ckpt_name"), ("DeepGenVLMLoader", "vlm_name"),
                                          ("DeepGenDiTLoader", "dit_name")])
def test_missing_model_is_reported_once(comfy, node, widget):
    prompt = {"1": {"class_type": node, "inputs": LOADER_INPUTS[node]("no-such-model")},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    if node == "DeepGenVLMLoader":
        prompt["1"]["inputs"]["lora"] = "none"
    valid, _, _, errors = comfy.validate(prompt)
    assert not valid
    reports = errors["1"]["errors"]
    assert len(reports) == 1, reports
    assert reports[0]["extra_info"]["input_name"] == widget and "not one of the DeepGen models" in reports[0]["details"]


# ------------------------------------------------------------------ the real server: routes and POST /prompt

ROUTE = "/deepgen/prompt_preview"


def _post_raw(server, data: bytes, path=ROUTE):
    req = urllib.request.Request(server.url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _healthy(server, good: bytes, want: bytes):
    assert server.get("/system_stats")["system"]
    status, body = _post_raw(server, good)
    assert status == 200 and body == want


@pytest.mark.parametrize("data, fragment", [
    (b"[" * 50_000 + b"]" * 50_000, "nests deeper than 8 levels"),
    (b"{\"mode\": " * 20_000 + b"1" + b"}" * 20_000, "nests deeper"),
    (json.dumps({"mode": "t2i", "prompt": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}).encode(), "nests"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"", "not valid JSON"),
    (json.dumps({"mode": "t2i", "prompt": "a <|image_pad|> cat"}).encode(), "prompt contains <|image_pad|>"),
    (json.dumps({"mode": "edit", "negative_prompt": "<|video_pad|>", "references": [None]}).encode(),
     "negative_prompt contains <|video_pad|>"),
], ids=["nested-50k-lists", "nested-20k-objects", "nested-9", "malformed", "not-utf8", "empty", "image-pad", "video-pad"])
def test_prompt_preview_refuses_hostile_bodies_with_400(comfy_server, release, data, fragment):
    good = json.dumps({"mode": "t2i", "prompt": "a cat", "model": {"loader": "DeepGenVLMLoader", "name": RELEASE}}).encode()
    status, want = _post_raw(comfy_server, good)
    assert status == 200
    status, body = _post_raw(comfy_server, data)
    assert status == 400, (status, body[:300])
    assert fragment in json.loads(body)["error"]
    _healthy(comfy_server, good, want)


def _random_body(rng, depth=0):
    leaf = [None, True, 0, -1, 2**70, 1.5, "t2i", "edit", "a <|image_pad|>", "x" * rng.randrange(30), "", [], {}]
    if depth > rng.randrange(1, 12) or rng.random() < 0.3:
        return rng.choice(leaf)
    if rng.random() < 0.4:
        return [_random_body(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["mode", "prompt", "negative_prompt", "references", "width", "height", "max_side", "model", "loader", "name",
            "vlm_base", "zzz"]
    return {rng.choice(keys): _random_body(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_prompt_preview_fuzz_never_500(comfy_server, release):
    """Seeded random bodies (random JSON shaped like requests, random bytes), bounded in time: every answer is 200
    or a 400 with an error message; the server answers the same valid request identically afterwards."""
    rng = random.Random(13)
    good = json.dumps({"mode": "edit", "prompt": "x", "references": [{"width": 64, "height": 48}], "max_side": 64,
                       "model": {"loader": "DeepGenCheckpointLoader", "name": RELEASE}}).encode()
    status, want = _post_raw(comfy_server, good)
    assert status == 200
    deadline, seen = time.monotonic() + 40, {200: 0, 400: 0}
    for i in range(400):
        if time.monotonic() > deadline:
            break
        if i % 7 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            body = _random_body(rng)
            if isinstance(body, dict) and rng.random() < 0.6:
                body.setdefault("mode", rng.choice(["t2i", "edit"]))
            data = json.dumps(body).encode()
        status, answer = _post_raw(comfy_server, data)
        assert status in (200, 400), (status, data[:300], answer[:300])
        if status == 400:
            assert json.loads(answer)["error"]
        seen[status] += 1
    assert seen[400] > 20 and seen[200] > 0, seen
    _healthy(comfy_server, good, want)


def test_cfg_nan_through_post_prompt_is_a_validation_error(comfy_server, release):
    prompt = t2i(cfg=float("nan"))  # json.dumps writes NaN, which ComfyUI's JSON parser accepts
    with pytest.raises(comfy_server.PromptRejected) as err:
        comfy_server.post_prompt(prompt)
    assert err.value.status == 400
    details = repr(err.value.body["node_errors"]["5"])
    assert "cfg" in details and "finite" in details
    assert comfy_server.get("/system_stats")["system"]
