"""The web extension's HTTP routes (nodes/routes.py) on the real server: exact strings from the engine,
token counts from the listed release's tokenizer, strict validation, no path from the request."""
from __future__ import annotations

import json
import math

import pytest

from deepgen_model import tiny as deepgen_tiny
from deepgen_model.constants import EDIT_NEGATIVE, NUM_THINK_TOKENS
from deepgen_model.images import image_token_count, reference_size
from deepgen_model.prompts import edit_prompt, t2i_prompt, tokenize_pair

RELEASE = "DeepGen-1.0-diffusers"
ROUTE = "/deepgen/prompt_preview"
MODEL = {"loader": "DeepGenVLMLoader", "name": RELEASE}


@pytest.fixture(scope="module")
def tokenizer(release):
    from deepgen_model.vlm_loading import load_tokenizer

    return load_tokenizer(release / "tokenizer")


def post(server, payload, path=ROUTE):
    status, ctype, body = server.request("POST", path, payload)
    return status, json.loads(body) if body and "json" in ctype else body


def expected_tokens(tokenizer, positive, negative):
    ids, mask = tokenize_pair(tokenizer, [positive], [negative])
    pos, neg = mask.sum(1).tolist()
    return {"positive": pos, "negative": neg, "padded": ids.shape[1], "think": NUM_THINK_TOKENS, "tokenizer": RELEASE}


def test_t2i_strings_and_tokens_equal_engine(comfy_server, release, tokenizer):
    prompt = "a poster that reads \"DeepGen 1.0\", ünïcode ✓\nsecond line"
    status, r = post(comfy_server, {"mode": "t2i", "prompt": prompt, "negative_prompt": "", "model": MODEL})
    assert status == 200, r
    assert r["positive"] == t2i_prompt(prompt)
    assert r["negative"] == t2i_prompt("") == "<|im_start|>user\nGenerate an image: <|im_end|>\n<|im_start|>assistant\n"
    assert r["complete"] and r["references"] == [] and r["output"] is None
    assert r["tokens"] == expected_tokens(tokenizer, r["positive"], r["negative"])
    assert r["tokens"]["positive"] > r["tokens"]["negative"]  # left padding makes the negative row shorter


@pytest.mark.parametrize("mode", ["t2i", "edit"])
def test_an_empty_prompt_gets_the_encode_nodes_note_before_running(comfy_server, mode):
    """The panel shows the note the encode node gives when it runs (deepgen_model.conditioning)."""
    from deepgen_model.conditioning import empty_prompt_warning

    body = {"mode": mode, "prompt": " \n", "negative_prompt": "", "model": MODEL}
    if mode == "edit":
        body["references"] = [{"width": 64, "height": 64}]
    status, r = post(comfy_server, body)
    assert status == 200 and r["warnings"] == [empty_prompt_warning("prompt", "", mode == "edit")], r
    status, r = post(comfy_server, {**body, "prompt": "a cat"})
    assert status == 200 and r["warnings"] == [], r


def test_edit_strings_sizes_and_tokens_equal_engine(comfy_server, release, tokenizer):
    refs = [(1024, 576), (40, 72), (700, 700)]
    body = {"mode": "edit", "prompt": "put image 2 into image 1", "negative_prompt": EDIT_NEGATIVE,
            "references": [{"width": w, "height": h} for w, h in refs], "max_side": 384, "width": 640, "height": 448,
            "model": {"loader": "DeepGenCheckpointLoader", "name": RELEASE, "vlm_base": "none"}}
    status, r = post(comfy_server, body)
    assert status == 200, r
    resized = [reference_size(w, h, 384) for w, h in refs]
    counts = [image_token_count(h, w) for w, h in resized]
    assert [x["resized"] for x in r["references"]] == [list(s) for s in resized]
    assert [x["tokens"] for x in r["references"]] == counts == [84, 6, 144]
    assert r["positive"] == edit_prompt(body["prompt"], counts)
    assert r["negative"] == edit_prompt(EDIT_NEGATIVE, counts)
    assert r["output"] == {"width": 640, "height": 448, "from": "widgets"}
    assert r["tokens"] == expected_tokens(tokenizer, r["positive"], r["negative"])
    assert r["tokens"]["positive"] >= sum(counts)  # every <|image_pad|> is one token


def test_edit_one_reference_sets_output_size_and_unknown_sizes_are_marked(comfy_server, release, tokenizer):
    status, r = post(comfy_server, {"mode": "edit", "prompt": "x", "negative_prompt": "",
                                    "references": [{"width": 100, "height": 50}]})
    assert status == 200, r
    assert r["output"] == {"width": 128, "height": 64, "from": "image1"}  # encode.py's rule for one reference
    assert r["tokens"] is None and "loader" in r["tokens_note"]
    status, r = post(comfy_server, {"mode": "edit", "prompt": "x", "negative_prompt": "", "model": MODEL,
                                    "references": [{"width": 512, "height": 512}, None]})
    assert status == 200, r
    assert r["complete"] is False and r["references"][1] is None
    assert r["positive"] == edit_prompt("x", [256, 1])  # one pad stands in for the unknown block
    full = expected_tokens(tokenizer, r["positive"], r["negative"])
    assert r["tokens"]["positive"] == full["positive"] - 1  # ... and is not counted


@pytest.mark.parametrize("body, fragment", [
    ([], "JSON object"),
    ({"mode": "video"}, "mode"),
    ({"mode": "t2i", "prompt": 3}, "prompt must be a string"),
    ({"mode": "t2i", "negative_prompt": ["a"]}, "negative_prompt"),
    ({"mode": "edit"}, "references"),
    ({"mode": "edit", "references": [None] * 5}, "references"),
    ({"mode": "edit", "references": [{"width": 10}]}, "height"),
    ({"mode": "edit", "references": [{"width": True, "height": 10}]}, "width"),
    ({"mode": "edit", "references": [{"width": 1.5, "height": 10}]}, "width"),
    ({"mode": "edit", "references": [{"width": 0, "height": 10}]}, "width"),
    ({"mode": "edit", "references": [{"width": 10, "height": 10, "path": "/etc"}]}, "references[0]"),
    ({"mode": "edit", "references": [None], "max_side": 500}, "max_side"),
    ({"mode": "edit", "references": [None, None], "width": 500}, "width"),
    ({"mode": "t2i", "model": "x"}, "model"),
    ({"mode": "t2i", "model": {"loader": "LoadImage", "name": RELEASE}}, "model"),
    ({"mode": "t2i", "model": {"loader": "DeepGenVLMLoader", "name": 7}}, "model.name"),
])
def test_invalid_input_is_refused(comfy_server, release, body, fragment):
    status, r = post(comfy_server, body)
    assert status == 400, r
    assert fragment in r["error"]


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", f"{RELEASE}/../{RELEASE}",
                                  f"{RELEASE}/tokenizer", "..", "", "C:\\Windows\\win.ini"])
def test_names_must_be_listed_models(comfy_server, release, name):
    """An unlisted name reads nothing; the prompt preview still answers (200: no console error in the UI)
    and says the token count waits for the model's files (retry: the panel asks again)."""
    for loader in ("DeepGenVLMLoader", "DeepGenCheckpointLoader"):
        status, r = post(comfy_server, {"mode": "t2i", "prompt": "a cat", "model": {"loader": loader, "name": name}})
        assert status == 200, (loader, name, r)
        assert r["positive"] == t2i_prompt("a cat") and r["tokens"] is None and r["retry"] is True
        assert "is not in the model folders (yet)" in r["tokens_note"]
        assert "root:" not in json.dumps(r)
    status, r = post(comfy_server, {"mode": "t2i", "model": {"loader": "DeepGenCheckpointLoader", "name": RELEASE,
                                                              "vlm_base": "../../etc"}})
    assert status == 200 and r["tokens"] is not None  # vlm_base is only read for a native model.pt


def test_malformed_and_oversized_bodies(comfy_server, release):
    import urllib.error
    import urllib.request

    for data, want in ((b"{not json", 400), (b"{" + b" " * (300 * 1024) + b"}", 413)):
        req = urllib.request.Request(comfy_server.url + ROUTE, data=data, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        assert status == want, body[:200]
        assert "error" in json.loads(body)


def test_routes_also_under_api_prefix_and_presets_follow_the_rules(comfy_server, release):
    status, r = post(comfy_server, {"mode": "t2i", "prompt": "a"}, "/api" + ROUTE)
    assert status == 200 and r["positive"] == t2i_prompt("a")
    data = comfy_server.get("/api/deepgen/size_presets")
    assert data["multiple"] == 16
    presets = data["presets"]
    assert {"name": "1:1", "width": 512, "height": 512} in presets
    for p in presets:
        a, b = map(int, p["name"].split(":"))
        assert p["width"] % 32 == 0 and p["height"] % 32 == 0
        assert 0.95 <= p["width"] * p["height"] / 512**2 <= 1.25, p  # ~512x512 area (rounded up)
        assert math.isclose(p["width"] / p["height"], a / b, rel_tol=0.12), p


def test_tokenizer_of_every_layout_without_loading_the_vlm(comfy_server, release, tokenizer, tiny):
    """Qwen folder, converted file/folder (embedded tokenizer) and native model.pt + vlm_base (names as
    test_loader_nodes places them; idempotent) all count with the same tokenizer as the release."""
    from deepgen_model.convert import convert

    root = comfy_server.base / "models" / "deepgen"
    if not (root / "Qwen2.5-VL-3B-Instruct").exists():
        deepgen_tiny.write_qwen_base(root / "Qwen2.5-VL-3B-Instruct", tiny)
    if not (root / "DeepGen-1.0" / "model.pt").exists():
        deepgen_tiny.write_native_model_pt(root / "DeepGen-1.0" / "model.pt", tiny)
    if not (root / "converted" / "deepgen_vae.safetensors").is_file():
        convert(root / RELEASE, root / "converted")
    want = None
    for model in ({"loader": "DeepGenVLMLoader", "name": "Qwen2.5-VL-3B-Instruct"},
                  {"loader": "DeepGenVLMLoader", "name": "converted/deepgen_vlm.safetensors"},
                  {"loader": "DeepGenCheckpointLoader", "name": "converted"},
                  {"loader": "DeepGenCheckpointLoader", "name": "DeepGen-1.0/model.pt",
                   "vlm_base": "Qwen2.5-VL-3B-Instruct"}):
        status, r = post(comfy_server, {"mode": "t2i", "prompt": "a cat", "model": model})
        assert status == 200 and r["tokens"] is not None, (model, r)
        want = want or expected_tokens(tokenizer, r["positive"], r["negative"])
        assert {k: v for k, v in r["tokens"].items() if k != "tokenizer"} == \
               {k: v for k, v in want.items() if k != "tokenizer"}, model
    status, r = post(comfy_server, {"mode": "t2i", "model": {"loader": "DeepGenCheckpointLoader",
                                                              "name": "DeepGen-1.0/model.pt"}})
    assert status == 200 and r["tokens"] is None and "vlm_base" in r["tokens_note"]


def test_long_prompts_are_previewed_with_the_engines_warning(comfy_server, release, tokenizer):
    from deepgen_model.conditioning import long_prompt_warning

    prompt = "a lighthouse on a cliff at dusk, " * 800  # ≈ 26,000 characters
    status, r = post(comfy_server, {"mode": "t2i", "prompt": prompt, "negative_prompt": "", "model": MODEL})
    assert status == 200, r
    assert r["positive"] == t2i_prompt(prompt)
    n = r["tokens"]["positive"]
    assert n == expected_tokens(tokenizer, r["positive"], r["negative"])["positive"] and n > 1024
    assert r["warnings"] == [long_prompt_warning("prompt", n)]  # the very text the encode node reports
    status, r = post(comfy_server, {"mode": "t2i", "prompt": prompt, "negative_prompt": ""})  # no tokenizer yet
    assert status == 200 and r["tokens"] is None
    assert len(r["warnings"]) == 1 and r["warnings"][0].startswith(f"prompt is {len(prompt)} characters")
    status, r = post(comfy_server, {"mode": "t2i", "prompt": "a cat", "negative_prompt": "", "model": MODEL})
    assert r["warnings"] == [] and r["retry"] is False


def test_template_cards_get_descriptions_and_the_category_a_name(comfy_server):
    """ComfyUI merges the pack's locales/en/main.json into /i18n: the frontend names the template category
    "DeepGen 1.0" with it, and the web extension (web/lib/templates.js) writes each card's description from it."""
    messages = comfy_server.get("/i18n")["en"]["templateWorkflows"]
    assert messages["category"]["ComfyUI-DeepGen"] == "DeepGen 1.0"
    descriptions = messages["templateDescription"]["ComfyUI-DeepGen"]
    assert descriptions["DeepGen 2 - Edit an image"].startswith("Change one picture")
    assert set(comfy_server.get("/workflow_templates")["ComfyUI-DeepGen"]) == set(descriptions)


def test_template_cards_come_in_the_numbered_order(comfy_server):
    """ComfyUI lists a pack's templates in directory order (unsorted glob); the frontend shows them in the
    order served. nodes/routes.py sorts our list by the number in the names, on both paths."""
    for path in ("/workflow_templates", "/api/workflow_templates"):
        names = comfy_server.get(path)["ComfyUI-DeepGen"]
        assert [int(n.split(" ")[1]) for n in names] == list(range(1, len(names) + 1)), (path, names)
        assert names[0] == "DeepGen 1 - Text to image"
