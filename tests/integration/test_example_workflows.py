"""example_workflows/: every UI workflow validates against the live server's /object_info, agrees with its
API twin (example_workflows/api/), is listed by /api/workflow_templates, and every twin EXECUTES on the
real server with the tiny fixtures (steps and sizes shrunk in memory, never in the files).

The UI checks mirror what frontend 1.32.9 does when it loads a workflow and exports it (widget positions,
bypassed nodes passed through): tests/workflow_export.py.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from workflow_export import BYPASSED, FRONTEND_ONLY, TWINS, WIDGET_TYPES, ui_to_api, widget_slots


REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
PACK = "ComfyUI-DeepGen"
RELEASE = "DeepGen-1.0-diffusers"
HF_RELEASE = "https://huggingface.co/deepgenteam/DeepGen-1.0-diffusers/resolve/main/"
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MODEL_WIDGETS = {"ckpt_name", "vlm_name", "scb_name", "dit_name", "vae_name"}
TINY_STEPS, TINY_SIZE = 2, 64
# Skip-layer guidance at the tiny budget: the templates skip the real DiT's blocks 7, 8, 9 (of 24) from 1 % to
# 30 % of the schedule; the tiny DiT has 3 blocks, where core's patch would find none of them and skip nothing,
# and 2 steps put no step in that window. So block 1, over every step: the guidance really acts.
TINY_SLG = {"layers": "1", "start_percent": 0.0, "end_percent": 1.0}


def load(name: str, api: bool = False) -> dict:
    path = EXAMPLES / "api" / f"{TWINS[name]}.json" if api else EXAMPLES / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def server(comfy_server, release):
    """The live server with the release in place; the sample inputs are there because the pack put them
    into the input folder when it loaded (nothing is uploaded: the twins run as a user queues them)."""
    return comfy_server


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.object_info()


def input_spec(info: dict, name: str):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return section, info["input"][section][name]
    return None, None


# ------------------------------------------------------------------ files

def test_every_workflow_has_a_thumbnail_and_a_twin():
    assert sorted(TWINS) == NAMES, "a new example workflow needs its API twin's name in TWINS"
    for name in NAMES:
        with Image.open(EXAMPLES / f"{name}.jpg") as thumb:
            assert thumb.format == "JPEG" and thumb.size == (640, 480)
    assert sorted(p.stem for p in (EXAMPLES / "api").glob("*.json")) == sorted(TWINS.values())


# ------------------------------------------------------------------ (a) UI workflows against /object_info

@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_validates_against_object_info(name, object_info):
    wf = load(name)
    assert wf["version"] == 0.4 and {"id", "revision", "last_node_id", "last_link_id", "nodes", "links", "groups",
                                      "config", "extra"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] >= max(nodes)
    assert len({link[0] for link in wf["links"]}) == len(wf["links"])
    assert wf["last_link_id"] >= max((link[0] for link in wf["links"]), default=0)
    assert any(n["type"] in FRONTEND_ONLY for n in wf["nodes"]), "every workflow explains itself in a note"

    for node in wf["nodes"]:
        where = f"{name}: node {node['id']} {node['type']}"
        if node["type"] in FRONTEND_ONLY:
            assert len(node["widgets_values"]) == 1 and node["widgets_values"][0].strip(), where
            continue
        assert node["type"] in object_info, f"{where}: unknown node type"
        info = object_info[node["type"]]
        slots, values = widget_slots(info), node.get("widgets_values", [])
        assert len(values) == len(slots), f"{where}: {len(values)} widget values, frontend expects {[s[:2] for s in slots]}"
        for (wname, kind, opts), value in zip(slots, values):
            if kind == "control":
                assert value in CONTROL_VALUES, f"{where}: {wname} control {value!r}"
            elif kind == "upload":
                assert value == "image", f"{where}: upload widget {value!r}"
            elif opts["type"] == "COMBO":  # a bypassed node may name a file for the user to pick (template 9's LoRA)
                assert value in opts["options"] or (node["mode"] == BYPASSED and isinstance(value, str) and value), \
                    f"{where}: {wname}={value!r} not in {opts['options'][:8]}"
            elif opts["type"] in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {wname}={value!r}"
                assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}: {wname}={value} out of range"
                if opts["type"] == "INT":
                    assert isinstance(value, int), f"{where}: {wname}={value!r}"
            elif opts["type"] == "STRING":
                assert isinstance(value, str), f"{where}: {wname}={value!r}"
            if opts.get("advanced") and value != opts.get("default", value):  # the frontend hides advanced widgets
                assert node.get("showAdvanced") is True, f"{where}: {wname}={value!r} is hidden; set showAdvanced"
        # sockets: names and types as the server declares them; required sockets connected
        for slot in node.get("inputs", []):
            section, spec = input_spec(info, slot["name"])
            assert spec is not None and spec[0] == slot["type"], f"{where}: input {slot}"
        connected = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for iname in info.get("input_order", {}).get("required", []):
            spec = info["input"]["required"][iname]
            if not isinstance(spec[0], list) and spec[0] not in WIDGET_TYPES:
                assert iname in connected, f"{where}: required input {iname} unconnected"
        # output sockets as declared; a core node may gain trailing outputs between ComfyUI releases (SaveImage:
        # none on 0.3.75, IMAGE on 0.28), which the file may lack; our own nodes' outputs must all be there
        file_outputs, n = node.get("outputs", []), min(len(node.get("outputs", [])), len(info["output"]))
        assert [o["type"] for o in file_outputs[:n]] == info["output"][:n], f"{where}: outputs"
        assert not any(o.get("links") for o in file_outputs[n:]), f"{where}: links from an undeclared output"
        assert n == len(info["output"]) or not info["python_module"].startswith("custom_nodes."), f"{where}: outputs"

    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        where = f"{name}: link {link_id}"
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert typ == out["type"] == inp["type"] == object_info[nodes[src]["type"]]["output"][src_slot], where
        assert inp["link"] == link_id and link_id in (out["links"] or []), where
    linked = {link[0] for link in wf["links"]}
    for node in wf["nodes"]:
        for slot in node.get("inputs", []):
            assert slot.get("link") is None or slot["link"] in linked, f"{name}: dangling input link {slot}"
        for slot in node.get("outputs", []):
            assert set(slot.get("links") or []) <= linked, f"{name}: dangling output links {slot}"


@pytest.mark.parametrize("name", NAMES)
def test_model_metadata_for_the_missing_models_dialog(name, server, object_info):
    """properties.models on every loader (the files its selected release folder must hold) and their union in
    the workflow-level "models" list, which is what frontend 1.32.9's missing-models dialog reads for
    names that are not widget values. With the release in place, the dialog finds every file."""
    wf = load(name)
    folders = {f["name"] for f in server.get("/experiment/models")}
    union = []
    for node in wf["nodes"]:
        selected = {v for v in node.get("widgets_values", []) if isinstance(v, str)}
        entries = node.get("properties", {}).get("models", [])
        slots = widget_slots(object_info[node["type"]]) if node["type"] in object_info else []
        model_values = [v for (wname, kind, _), v in zip(slots, node["widgets_values"])
                        if wname in MODEL_WIDGETS and kind == "value"]
        assert bool(entries) == bool(model_values), f"{name}: node {node['id']} {node['type']} models {entries}"
        for entry in entries:
            assert set(entry) == {"name", "url", "directory"} and entry["directory"] == "deepgen" in folders
            release, _, rel = entry["name"].partition("/")
            assert release in selected and entry["name"].endswith(".safetensors"), entry
            assert entry["url"] == HF_RELEASE + rel, entry
            union.append(entry)
    assert {e["url"]: e for e in wf["models"]} == {e["url"]: e for e in union}
    listed = {m["name"] for m in server.get("/experiment/models/deepgen")}
    assert {e["name"] for e in wf["models"]} <= listed, "the dialog would report a present file as missing"


# ------------------------------------------------------------------ (b) UI <-> API twin

@pytest.mark.parametrize("name", NAMES)
def test_api_twin_matches_ui_workflow(name, object_info):
    assert ui_to_api(load(name), object_info) == load(name, api=True)


# ------------------------------------------------------------------ (c) template browser

def test_template_browser_lists_the_workflows(server):
    listing = server.get("/api/workflow_templates")
    assert sorted(listing[PACK]) == NAMES  # api/ twins and input/ images are not templates
    for name in NAMES:  # the URLs the frontend builds from the names (spaces and brackets: encoded by the browser)
        status, _, body = server.request("GET", f"/api/workflow_templates/{PACK}/{quote(name)}.json")
        assert status == 200 and json.loads(body) == load(name)
        status, _, body = server.request("GET", f"/api/workflow_templates/{PACK}/{quote(name)}.jpg")
        assert status == 200 and body[:2] == b"\xff\xd8"


# ------------------------------------------------------------------ (d) every API twin executes

def _bnb_problem() -> str | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    try:
        import bitsandbytes
        import torch

        bitsandbytes.nn.Linear8bitLt(8, 8, has_fp16_weights=False)(torch.randn(2, 8))
    except Exception as e:  # a broken native library or no backend for this device
        return f"{type(e).__name__}: {e}"
    return None


def tiny(prompt: dict) -> dict:
    """The twin with the tiny fixtures' budget: 2 steps, 64 px (references resized to 64 on the long side)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("DeepGenSampler", "DeepGenScheduler"):
            inputs["steps"] = TINY_STEPS
        elif node["class_type"] == "EmptySD3LatentImage":
            inputs.update(width=TINY_SIZE, height=TINY_SIZE)
        elif node["class_type"] == "DeepGenEditEncode":
            inputs.update(max_side=TINY_SIZE, width=TINY_SIZE, height=TINY_SIZE)
        elif node["class_type"] == "SkipLayerGuidanceSD3":
            inputs.update(TINY_SLG)
        elif inputs.get("quantization") == "8-bit" and _bnb_problem():
            inputs["quantization"] = "none"  # bitsandbytes unusable here: still run the graph
    return prompt


@pytest.fixture(scope="module")
def executed(server) -> dict:
    """name -> saved image (uint8 [H, W, 3]), each twin run once."""
    results = {}

    def run(name: str) -> np.ndarray:
        if name not in results:
            results[name] = saved_image(server, tiny(load(name, api=True)))
        return results[name]

    return run


def saved_image(server, prompt: dict) -> np.ndarray:
    """Run an API prompt; its Save Image's picture (uint8 [H, W, 3])."""
    entry = server.run(prompt, timeout=180)
    (save,) = [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]
    (image,) = entry["outputs"][save]["images"]
    path = server.base / "output" / image["subfolder"] / image["filename"]
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_executes(name, executed):
    image = executed(name)
    assert image.shape == (TINY_SIZE, TINY_SIZE, 3)  # T2I: the latent; edits: 512 px samples at max_side 64
    assert image.std() > 5, "a flat image"


def test_sampler_custom_advanced_equals_deepgen_sampler(executed):
    """Same prompt and seed: core SamplerCustomAdvanced + DeepGenScheduler reproduces DeepGenSampler exactly."""
    t2i, core = "DeepGen 1 - Text to image", "DeepGen 8 - Core custom sampler"
    assert load(t2i, api=True)["2"]["inputs"] == load(core, api=True)["2"]["inputs"]
    np.testing.assert_array_equal(executed(core), executed(t2i))


def _tiny_lora(folder: Path) -> str:
    """A LoRA in ComfyUI's MMDiT names on the tiny DiT's first block (what the template 9 note says to pick)."""
    import torch
    from safetensors.torch import save_file

    from deepgen_model.tiny import TINY_DIT

    width = TINY_DIT["num_attention_heads"] * TINY_DIT["attention_head_dim"]
    g = torch.Generator().manual_seed(9)
    key = "diffusion_model.joint_blocks.0.x_block.attn.qkv"
    folder.mkdir(exist_ok=True)
    save_file({f"{key}.lora_up.weight": torch.randn(3 * width, 4, generator=g),
               f"{key}.lora_down.weight": torch.randn(4, width, generator=g), f"{key}.alpha": torch.tensor(4.0)},
              str(folder / "t9_lora.safetensors"))
    return "t9_lora.safetensors"


def test_lora_and_slg_template_changes_only_the_model(server, executed, object_info, comfy_models):
    """Template 9 is template 1 with its MODEL through a bypassed LoRA and skip-layer guidance: at SLG scale 0 it
    makes template 1's picture exactly (the bypassed LoRA hands the model on untouched), with SLG acting another
    one, and with the LoRA enabled as its note says (a LoRA picked, Ctrl+B) the LoRA loads and changes it again."""
    t2i, t9 = "DeepGen 1 - Text to image", "DeepGen 9 - LoRA and SLG"
    base, twin = load(t2i, api=True), load(t9, api=True)
    assert twin["2"]["inputs"] == base["2"]["inputs"] and twin["3"]["inputs"] == base["3"]["inputs"]
    assert {**twin["4"]["inputs"], "model": None} == {**base["4"]["inputs"], "model": None}
    assert twin["4"]["inputs"]["model"] == ["8", 0] and twin["8"]["inputs"]["model"] == ["1", 0]

    off = tiny(twin)
    off["8"]["inputs"]["scale"] = 0.0
    np.testing.assert_array_equal(saved_image(server, off), executed(t2i))
    guided = executed(t9)
    assert np.abs(guided.astype(int) - executed(t2i)).max() > 8, "skip-layer guidance changed nothing"

    ui = load(t9)
    (lora,) = [n for n in ui["nodes"] if n["type"] == "LoraLoaderModelOnly"]
    assert lora["mode"] == BYPASSED
    lora["mode"], lora["widgets_values"][0] = 0, _tiny_lora(comfy_models / "loras")
    enabled = tiny(ui_to_api(ui, object_info))
    assert enabled["8"]["inputs"]["model"] == [str(lora["id"]), 0] and enabled[str(lora["id"])]["inputs"]["model"] == ["1", 0]
    log_before = server.log_text().count("lora key not loaded")
    assert np.abs(saved_image(server, enabled).astype(int) - guided).max() > 8, "the LoRA changed nothing"
    assert server.log_text().count("lora key not loaded") == log_before
