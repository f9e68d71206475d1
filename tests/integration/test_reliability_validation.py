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


def _header(change):
    """Rewrite a safetensors header (the data stays): change(header, data bytes) edits it in place."""
    def damage(f):
        raw = f.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        change(header, len(raw) - 8 - n)
        text = json.dumps(header).encode()
        f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return damage


def _as_i32(header, _size):  # F32 data declared I32: same bytes, other meaning
    next(v for k, v in sorted(header.items()) if k != "__metadata__" and v["dtype"] == "F32")["dtype"] = "I32"


def _huge_zero_size(header, size):  # a zero-size tensor with a dimension of 2^63
    header["zz"] = {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [size, size]}


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
    # issue 20
    ("scb-i32", "DeepGenSCBLoader", "connector/model.safetensors", _header(_as_i32), "SCB", "is declared I32, but"),
    ("dit-i32", "DeepGenCheckpointLoader", "transformer/diffusion_pytorch_model.safetensors", _header(_as_i32), "DiT",
     "is declared I32, but"),
    ("dit-2e63-dim", "DeepGenDiTLoader", "transformer/diffusion_pytorch_model.safetensors", _header(_huge_zero_size),
     "DiT", "a dimension beyond 2^63 - 1"),
    ("vlm-act", "DeepGenVLMLoader", "vlm/config.json", _config(hidden_act="relu"), "VLM", 'hidden_act is "relu"'),
    ("vlm-mrope", "DeepGenCheckpointLoader", "vlm/config.json",
     _config(rope_scaling={"type": "mrope", "mrope_section": [100, 100, 100]}), "VLM",
     "mrope_section is [100, 100, 100]"),
    ("vlm-llama", "DeepGenVLMLoader", "vlm/config.json", _config(model_type="llama"), "VLM", 'model_type is "llama"'),
    ("vlm-image-token", "DeepGenVLMLoader", "vlm/config.json", _config(image_token_id=5), "VLM",
     "image_token_id is 5, but the tokenizer's id of <|image_pad|>"),
    ("sched-base-nan", "DeepGenCheckpointLoader", "scheduler/scheduler_config.json",
     _config(use_dynamic_shifting=True, base_shift=float("nan")), "scheduler", "base_shift is NaN"),
    ("sched-zero-range", "DeepGenDiTLoader", "scheduler/scheduler_config.json",
     _config(use_dynamic_shifting=True, max_image_seq_len=256), "scheduler", "below max_image_seq_len 256"),
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


def _random_request(rng, raw: bool) -> bytes:
    """Random bytes, or a random JSON body shaped like a request (usually with a valid mode)."""
    if raw:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    body = _random_body(rng)
    if isinstance(body, dict) and rng.random() < 0.6:
        body.setdefault("mode", rng.choice(["t2i", "edit"]))
    return json.dumps(body).encode()


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
        data = _random_request(rng, raw=i % 7 == 0)
        status, answer = _post_raw(comfy_server, data)
        assert status in (200, 400), (status, data[:300], answer[:300])
        if status == 400:
            assert json.loads(answer)["error"]
        seen[status] += 1
    assert seen[400] > 20 and seen[200] > 0, seen
    _healthy(comfy_server, good, want)


# ------------------------------------------------------------------ compressed, chunked, undecodable bodies

PACK_POSTS = (ROUTE, "/api" + ROUTE)  # every pack route that reads a body (GET /deepgen/size_presets reads none)


def _send(server, data: bytes, encoding: str | None = None, chunked: bool = False, path: str = ROUTE):
    """POST raw bytes with a Content-Encoding (as given: it need not match the bytes), with a Content-Length or
    chunked; -> (status, body)."""
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json", **({"Content-Encoding": encoding} if encoding else {})}
    try:
        try:
            if chunked:
                conn.putrequest("POST", path)
                for k, v in {**headers, "Transfer-Encoding": "chunked"}.items():
                    conn.putheader(k, v)
                conn.endheaders()
                for i in range(0, len(data), 4096):
                    part = data[i:i + 4096]
                    conn.send(b"%x\r\n%s\r\n" % (len(part), part))
                conn.send(b"0\r\n\r\n")
            else:
                conn.request("POST", path, body=data, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (and closed) before the whole body was sent: read that answer
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _compress(data: bytes, how: str) -> bytes:
    import gzip
    import zlib

    return gzip.compress(data) if how == "gzip" else zlib.compress(data)


def _rss_mib(server) -> float:
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("how", ["gzip", "deflate"])
def test_compressed_body_is_held_to_the_limit_once_decoded(comfy_server, release, how):
    """14 KiB of gzip that inflates to a 10 MB prompt was read whole (8 s of work, +1.7 GiB): now reading stops
    at 256 KiB of decoded body, on every pack route that takes a body, sent with a length or chunked."""
    good = json.dumps({"mode": "t2i", "prompt": "a cat"}).encode()
    status, want = _post_raw(comfy_server, good)
    assert status == 200
    assert _send(comfy_server, _compress(good, how), how) == (200, want)  # a small compressed body is fine
    bomb = _compress(json.dumps({"mode": "t2i", "prompt": "a" * 10_000_000}).encode(), how)
    assert len(bomb) < 15_000
    before = _rss_mib(comfy_server)
    for path in PACK_POSTS:
        for chunked in (False, True):
            t0 = time.monotonic()
            status, body = _send(comfy_server, bomb, how, chunked, path)
            took = time.monotonic() - t0
            assert status == 413 and "once decoded" in json.loads(body)["error"], (path, chunked, status, body[:200])
            assert took < 5, f"{path}: {took:.1f} s"
    grew = _rss_mib(comfy_server) - before
    assert grew < 100, f"the server grew by {grew:.0f} MiB"
    _healthy(comfy_server, good, want)


def test_undecodable_and_mislabelled_bodies_are_400(comfy_server, release):
    good = json.dumps({"mode": "t2i", "prompt": "a cat"}).encode()
    status, want = _post_raw(comfy_server, good)
    for data, encoding, fragment in ((b"not gzip at all", "gzip", "could not be read"),
                                     (b"\x78\x9c garbage", "deflate", "could not be read"),
                                     (_compress(good, "gzip")[:-12], "gzip", ""),  # cut short
                                     (good, "compress", "")):  # an encoding aiohttp does not decode: raw bytes
        status, body = _send(comfy_server, data, encoding)
        assert status in (200, 400), (encoding, status, body[:200])
        if status == 400:
            assert fragment in json.loads(body)["error"]
    assert _send(comfy_server, good, chunked=True) == (200, want)  # no Content-Length: read, bounded
    _healthy(comfy_server, good, want)


def test_undecodable_body_after_its_headers_is_answered_not_left_hanging(comfy_server, release):
    """Headers first, then a deflate body that cannot be decoded: aiohttp answers 400 itself but leaves the
    route's read waiting for ever; the route's time bound answers instead (408) and the server stays healthy."""
    import socket

    good = json.dumps({"mode": "t2i", "prompt": "a cat"}).encode()
    status, want = _post_raw(comfy_server, good)
    data = bytes.fromhex("789cedc8a10d80300004c0559ad72824e3102a104d1b5247d8")  # found by the fuzz below
    host, port = comfy_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\nContent-Encoding: deflate\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode())
        time.sleep(0.3)  # the body in a packet of its own
        s.sendall(data)
        t0 = time.monotonic()
        answer = s.recv(65536)
    assert answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 400")) and time.monotonic() - t0 < 15, answer[:200]
    _healthy(comfy_server, good, want)


@pytest.mark.parametrize("body", [{"mode": "t2i", "prompt": "a \ud800 cat"},
                                  {"mode": "edit", "negative_prompt": "\udfff", "references": [None]},
                                  {"mode": "t2i", "prompt": "x\ud800", "model": {"loader": "DeepGenVLMLoader",
                                                                                 "name": RELEASE}}])
def test_lone_surrogate_in_a_prompt_is_400(comfy_server, release, body):
    """Issue 20: json.dumps writes "\\ud800", which JSON parses into a lone surrogate: it was a 500."""
    status, answer = _post_raw(comfy_server, json.dumps(body).encode())
    which = "negative_prompt" if "negative_prompt" in body else "prompt"
    assert status == 400 and json.loads(answer)["error"].startswith(f"{which} contains an unpaired surrogate"), answer


def test_prompt_preview_fuzz_over_compressed_and_malformed_bodies(comfy_server, release):
    """Seeded and bounded in time: request-shaped JSON or random bytes, sent plain, gzip or deflate (sometimes cut,
    corrupted, or labelled with another encoding), with a length or chunked, plus compressed bombs: every answer
    is 200, a 400 or a 413 with an error message, each within seconds; the server answers as before afterwards."""
    rng = random.Random(20)
    good = json.dumps({"mode": "t2i", "prompt": "a cat"}).encode()
    status, want = _post_raw(comfy_server, good)
    assert status == 200
    before = _rss_mib(comfy_server)
    deadline, seen = time.monotonic() + 40, {200: 0, 400: 0, 408: 0, 413: 0}
    for i in range(300):
        if time.monotonic() > deadline:
            break
        if i % 9 == 0:
            text = rng.choice("ab\ud800") * rng.randrange(200_000, 2_000_000)
            data = json.dumps({"mode": "t2i", "prompt": text}).encode()
        else:
            data = _random_request(rng, raw=i % 5 == 0)
        how = rng.choice([None, "gzip", "deflate"])
        if how:
            data = _compress(data, how)
            if rng.random() < 0.2:
                data = data[:rng.randrange(len(data))]
            elif rng.random() < 0.2:
                at = rng.randrange(len(data))
                data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
        label = rng.choice([how, how, None, "gzip", "deflate", "identity", "compress"])
        t0 = time.monotonic()
        status, answer = _send(comfy_server, data, label, chunked=rng.random() < 0.3, path=rng.choice(PACK_POSTS))
        assert status in seen, (status, label, data[:100], answer[:300])
        assert time.monotonic() - t0 < 15
        if answer.startswith(b"{"):
            assert status == 200 or json.loads(answer)["error"], answer
        else:  # aiohttp's own answer to bytes it cannot decode, before the route runs
            assert status == 400 and label in ("gzip", "deflate"), (status, label, answer[:200])
        seen[status] += 1
    assert seen[400] > 20 and seen[413] > 3 and seen[200] > 0, seen
    assert _rss_mib(comfy_server) - before < 200
    _healthy(comfy_server, good, want)


def test_cfg_nan_through_post_prompt_is_a_validation_error(comfy_server, release):
    prompt = t2i(cfg=float("nan"))  # json.dumps writes NaN, which ComfyUI's JSON parser accepts
    with pytest.raises(comfy_server.PromptRejected) as err:
        comfy_server.post_prompt(prompt)
    assert err.value.status == 400
    details = repr(err.value.body["node_errors"]["5"])
    assert "cfg" in details and "finite" in details
    assert comfy_server.get("/system_stats")["system"]
