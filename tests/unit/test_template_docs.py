"""What the templates' notes, the README and the docs state about the templates is what a newcomer finds:
every number (size, steps, cfg, seed, max_side, download size, counts of layers) and every path or name
(node titles, widget names, folders, files) is read from the workflows, the engine or the file tree."""
import json
import re
from pathlib import Path

import pytest

from deepgen_model import configs
from deepgen_model import download as dl
from deepgen_model.constants import selected_layers
from deepgen_model.scb import SCBConfig
from workflow_export import BYPASSED, FRONTEND_ONLY, MUTED

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows"
STEMS = sorted((p.stem for p in EXAMPLES.glob("*.json")), key=lambda s: int(s.split(" ")[1]))
DISPLAY = {"SaveImage": "Save Image", "VAEDecode": "VAE Decode", "DeepGenSampler": "DeepGen Sampler",
           "EmptySD3LatentImage": "EmptySD3LatentImage"}  # core display names of untitled nodes
UI_WORDS = {"Run", "Weights"}  # the Run button; the notes' heading for the weights
COUNT = {8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}  # how the README and the docs say it


def workflow(stem: str) -> dict:
    return json.loads((EXAMPLES / f"{stem}.json").read_text(encoding="utf-8"))


def nodes_of(wf: dict, kind: str) -> list[dict]:
    return [n for n in wf["nodes"] if n["type"] == kind]


def note(wf: dict) -> str:
    """The read-me note (a template may have more notes, next to the nodes they explain)."""
    (n,) = [n for n in nodes_of(wf, "MarkdownNote") if n.get("title") == "Read me"]
    return n["widgets_values"][0]


def release_gb() -> str:
    total = sum(f.approx_bytes or 0 for f in dl.FILES if f.part == "release")
    return f"≈{total / dl.GB:.1f} GB"


def facts(wf: dict) -> dict:
    """Numbers and names the graph really has."""
    sampler = (nodes_of(wf, "DeepGenSampler") or [None])[0]
    guider, noise = nodes_of(wf, "CFGGuider"), nodes_of(wf, "RandomNoise")
    steps = sampler["widgets_values"][2] if sampler else nodes_of(wf, "DeepGenScheduler")[0]["widgets_values"][0]
    cfg = sampler["widgets_values"][3] if sampler else guider[0]["widgets_values"][0]
    seed = sampler["widgets_values"][0] if sampler else noise[0]["widgets_values"][0]
    sizes = [tuple(n["widgets_values"][:2]) for n in nodes_of(wf, "EmptySD3LatentImage")]
    edits = nodes_of(wf, "DeepGenEditEncode")
    sizes += [tuple(n["widgets_values"][3:5]) for n in edits]
    names = {(n.get("title") or DISPLAY.get(n["type"], n["type"])).lower() for n in wf["nodes"]}
    widgets = {str(v) for n in wf["nodes"] for v in n.get("widgets_values", [])}
    loaders = [n for n in wf["nodes"] if n["type"].startswith("DeepGen") and n["type"].endswith("Loader")]
    return {"steps": steps, "cfg": cfg, "seed": seed, "sizes": sizes, "names": names, "widgets": widgets,
            "max_side": {n["widgets_values"][2] for n in edits}, "release": {n["widgets_values"][0] for n in loaders},
            "prefix": {n["widgets_values"][0] for n in nodes_of(wf, "SaveImage")}}


@pytest.mark.parametrize("stem", STEMS)
def test_the_read_me_note_states_what_the_graph_has(stem):
    wf = workflow(stem)
    text, have = note(wf), facts(wf)
    number = int(stem.split(" ")[1])
    assert text.startswith(f"# {number} · {stem.split(' - ', 1)[1]}\n"), "the note's heading is the card's title"
    for steps in re.findall(r"(\d+) steps", text):
        assert int(steps) == have["steps"], steps
    for cfg in re.findall(r"cfg (\d+(?:\.\d+)?)", text):
        assert float(cfg) == have["cfg"], cfg
    for seed in re.findall(r"seed (\d+)", text):
        assert int(seed) == have["seed"], seed
    stated = [(int(w), int(h)) for w, h in re.findall(r"(\d+)×(\d+)", text)]
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in stated), stated  # sizes DeepGen can make
    if have["sizes"] and stated:
        assert stated[0] in have["sizes"], (stated, have["sizes"])
    for side in re.findall(r"max_side\*\* \((\d+)", text):
        assert int(side) in have["max_side"]
    for bold in re.findall(r"\*\*(.+?)\*\*", text):  # the nodes, widgets and values a note points at exist
        known = bold in UI_WORDS or bold in have["widgets"] or any(n.startswith(bold.lower()) for n in have["names"])
        assert known or bold in {w for n in wf["nodes"] for w in _widget_names(n)}, f"{stem}: **{bold}**"
    for release in re.findall(r"ComfyUI/models/deepgen/([\w.-]+)", text):
        assert release in have["release"], release
    assert "`DeepGen-1.0-diffusers`" in text and f"({release_gb()})" in text and "`ComfyUI/models/deepgen/`" in text
    if "`output/DeepGen/`" in text:
        assert all(p.startswith("DeepGen/") for p in have["prefix"]) and have["prefix"]
    for other in re.findall(r"template (\d+)", text):
        assert int(other) <= len(STEMS)


def _widget_names(node: dict) -> set[str]:
    return {"max_side", "width", "height"} if node["type"] == "DeepGenEditEncode" else set()


def test_the_readme_lists_the_templates_in_order():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Example workflows"):]
    section = section[:section.index("\n## ")]
    count = COUNT[len(STEMS)].capitalize()
    assert section.count(f"{count} ready-made graphs ship in `example_workflows/`") == 1
    titles = re.findall(r"\*\*(?:DeepGen )?(\d+) - ([^*]+)\*\*", section)
    assert [f"DeepGen {n} - {t}" for n, t in titles] == STEMS
    assert "`text_to_image.json`" in section and (EXAMPLES / "api" / "text_to_image.json").is_file()
    for name in re.findall(r"`(example_workflows/[\w/]+)`", section):
        assert (REPO / name).exists(), name


def test_the_workflows_doc_pairs_each_template_with_its_twin():
    doc = (REPO / "docs" / "workflows.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(DeepGen \d+ - [^`]+)` \| `(\w+)` \|", doc, re.M)
    assert [ui for ui, _ in rows] == STEMS
    assert f"ships {COUNT[len(STEMS)]} workflows" in doc
    for ui, twin in rows:  # a twin is the same graph: same node ids and classes (notes and bypassed nodes aside)
        graph = {str(n["id"]): n["type"] for n in workflow(ui)["nodes"]
                 if n["type"] not in FRONTEND_ONLY and n["mode"] not in (MUTED, BYPASSED)}
        api = json.loads((EXAMPLES / "api" / f"{twin}.json").read_text(encoding="utf-8"))
        assert {k: v["class_type"] for k, v in api.items()} == graph, (ui, twin)
        assert f"## {ui.split(' ', 1)[1]} (`api/{twin}.json`)" in doc
    for sample in re.findall(r"`(deepgen_example_\w+\.png)`", doc):
        assert (EXAMPLES / "input" / sample).is_file(), sample
    assert sorted(set(re.findall(r"`(deepgen_example_\w+\.png)`", doc))) == sorted(
        p.name for p in (EXAMPLES / "input").glob("*.png"))
    for gb in re.findall(r"(?:≈|about )(\d+(?:\.\d+)?) GB", doc):  # the release's download size
        assert f"≈{gb} GB" == release_gb(), gb


def test_the_web_extension_doc_counts_the_release_stages():
    """docs/web-extension.md: the encode progress steps of the release (ViT blocks, decoder layers, SCB layers)."""
    doc = (REPO / "docs" / "web-extension.md").read_text(encoding="utf-8")
    vlm = configs.get("vlm")
    vit = vlm["vision_config"]["depth"]
    assert f"once per ViT block of each reference ({vit} per reference for the release)" in doc
    assert f"once\nper VLM decoder layer ({max(selected_layers(vlm['num_hidden_layers']))} for the release" in doc
    assert f"once\nper SCB layer ({SCBConfig().num_hidden_layers}:" in doc


def test_the_readme_states_the_largest_size():
    dit = configs.get("dit")
    largest = dit["pos_embed_max_size"] * dit["patch_size"] * 8
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"at most {largest} px per side (the DiT's position table)" in readme
