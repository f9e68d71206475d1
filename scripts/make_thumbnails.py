"""Draw the template-browser thumbnails of example_workflows/ and the sample input images.

    python scripts/make_thumbnails.py            # rewrites example_workflows/*.jpg and example_workflows/input/*.png

Thumbnails are schematic cards (title, description and the workflow's node chain as read from its JSON),
never model outputs. The title is the file name ("DeepGen 1 - Text to image"), which is also the card's
caption on every frontend, and the description is locales/en/main.json's: frontend 1.48 (ComfyUI 0.33) shows
no description under a custom node's card, so the thumbnail carries it. Sample inputs are simple drawings for
the edit workflows. Only Pillow's built-in font is used, so the files come out the same on every machine with
the same Pillow.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1] / "example_workflows"
LOCALE = ROOT.parent / "locales" / "en" / "main.json"
SIZE = (640, 480)
BG, FG, MUTED, LINK = (24, 26, 33), (236, 238, 243), (150, 156, 170), (120, 128, 145)
FRONTEND_ONLY = {"Note", "MarkdownNote"}
# node colour by role (DeepGen node types start with "DeepGen")
ROLES = [("Loader", (54, 104, 170)), ("Encode", (46, 140, 88)), ("Sampler", (128, 78, 168)),
         ("Scheduler", (128, 78, 168)), ("Guider", (128, 78, 168)), ("Noise", (128, 78, 168)),
         ("SamplerCustom", (128, 78, 168)), ("Guidance", (128, 78, 168)), ("Image", (190, 120, 40)),
         ("VAE", (160, 70, 70))]
BYPASSED = (4, (112, 48, 112))  # node mode 4 (Ctrl+B): drawn in the magenta ComfyUI tints bypassed nodes with


def font(size: int):
    return ImageFont.load_default(size=size)


def description_of(stem: str) -> str:
    """The template's description in locales/en/main.json ("" when it has none: a unit test requires one)."""
    messages = json.loads(LOCALE.read_text(encoding="utf-8"))["templateWorkflows"]["templateDescription"]
    return messages["ComfyUI-DeepGen"].get(stem, "")


def wrapped(d: ImageDraw.ImageDraw, text: str, size: int, width: float) -> list[str]:
    lines = [""]
    for word in text.split():
        trial = f"{lines[-1]} {word}".strip()
        if d.textlength(trial, font=font(size)) <= width or not lines[-1]:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines


def colour(node_type: str) -> tuple[int, int, int]:
    for key, rgb in ROLES:
        if key in node_type:
            return rgb
    return (90, 96, 110)


def columns(workflow: dict) -> list[list[dict]]:
    """Nodes grouped by longest-path depth from the sources (notes left out)."""
    nodes = {n["id"]: n for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY}
    parents: dict[int, list[int]] = {i: [] for i in nodes}
    for _, src, _, dst, _, _ in workflow["links"]:
        if src in nodes and dst in nodes:
            parents[dst].append(src)
    depth: dict[int, int] = {}

    def visit(i: int) -> int:
        if i not in depth:
            depth[i] = 1 + max((visit(p) for p in parents[i]), default=-1)
        return depth[i]

    for i in nodes:
        visit(i)
    cols = [[] for _ in range(max(depth.values()) + 1)]
    for i in sorted(nodes, key=lambda i: (nodes[i]["pos"][1], i)):
        cols[depth[i]].append(nodes[i])
    return cols


def label(node: dict) -> list[str]:
    """Node type without the DeepGen prefix, split into words on at most two lines."""
    words = re.findall(r"DiT|KSampler|SD3|[A-Z]+(?![a-z])|[A-Z][a-z]*", node["type"].removeprefix("DeepGen"))
    if len(words) <= 2:
        return words
    return [" ".join(words[:len(words) - 1]), words[-1]] if len(words) == 3 else [" ".join(words[:2]), " ".join(words[2:])]


def thumbnail(path: Path) -> Image.Image:
    workflow = json.loads(path.read_text(encoding="utf-8"))
    img = Image.new("RGB", SIZE, BG)
    d = ImageDraw.Draw(img)
    d.text((28, 22), "ComfyUI-DeepGen · DeepGen 1.0", font=font(18), fill=MUTED)
    title = path.stem.removeprefix("DeepGen ").replace(" - ", " · ", 1)
    size = 34
    while size > 20 and d.textlength(title, font=font(size)) > SIZE[0] - 56:
        size -= 1
    d.text((28, 46), title, font=font(size), fill=FG)
    description = description_of(path.stem).replace("×", "x")  # the built-in font has no "×"
    d.multiline_text((28, 92), "\n".join(wrapped(d, description, 24, SIZE[0] - 56)[:2]), font=font(24), fill=FG,
                     spacing=4)
    cols = columns(workflow)
    top, bottom, left, right = 166, SIZE[1] - 50, 28, SIZE[0] - 28
    col_w = (right - left) / len(cols)
    box_w, centre = min(150, col_w - 14), {}
    for c, col in enumerate(cols):
        box_h = min(44, (bottom - top) / len(col) - 10)
        gap = ((bottom - top) - len(col) * box_h) / (len(col) + 1)
        for r, node in enumerate(col):
            x0 = left + c * col_w + (col_w - box_w) / 2
            y0 = top + gap + r * (box_h + gap)
            centre[node["id"]] = (x0, y0, box_w, box_h)
    for _, src, _, dst, _, _ in workflow["links"]:
        if src in centre and dst in centre:
            sx, sy, sw, sh = centre[src]
            tx, ty, _, th = centre[dst]
            d.line([(sx + sw, sy + sh / 2), (tx, ty + th / 2)], fill=LINK, width=2)
    for node in (n for n in workflow["nodes"] if n["id"] in centre):
        x0, y0, w, h = centre[node["id"]]
        fill = BYPASSED[1] if node.get("mode") == BYPASSED[0] else colour(node["type"])
        d.rounded_rectangle([x0, y0, x0 + w, y0 + h], radius=8, fill=fill, outline=(20, 20, 24))
        lines, size = label(node), 13
        while size > 8 and max(d.textlength(x, font=font(size)) for x in lines) > w - 8:
            size -= 1
        d.multiline_text((x0 + w / 2, y0 + h / 2), "\n".join(lines), font=font(size), fill=FG, anchor="mm",
                         align="center", spacing=2)
    d.text((28, SIZE[1] - 34), f"example_workflows/{path.name}", font=font(14), fill=MUTED)
    return img


# ---------------------------------------------------------------- sample inputs for the edit workflows

def room() -> Image.Image:
    """A plain room: wall, window, floor, wooden table (image 1 of the edit examples)."""
    img = Image.new("RGB", (512, 512), (222, 214, 196))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 360, 512, 512], fill=(150, 110, 72))
    for y in range(380, 512, 26):
        d.line([(0, y), (512, y)], fill=(132, 95, 60), width=2)
    d.rectangle([300, 70, 450, 250], fill=(170, 205, 235), outline=(245, 245, 245), width=8)
    d.line([(375, 70), (375, 250)], fill=(245, 245, 245), width=6)
    d.line([(300, 160), (450, 160)], fill=(245, 245, 245), width=6)
    d.rectangle([90, 300, 330, 318], fill=(110, 70, 40))
    for x in (104, 304):
        d.rectangle([x, 318, x + 14, 440], fill=(95, 60, 34))
    return img


def teapot() -> Image.Image:
    """A blue teapot on white (image 2 of the multi-reference example)."""
    img = Image.new("RGB", (512, 512), (246, 246, 244))
    d = ImageDraw.Draw(img)
    d.ellipse([150, 200, 362, 390], fill=(40, 90, 170))
    d.polygon([(350, 270), (440, 210), (450, 222), (365, 310)], fill=(40, 90, 170))
    d.arc([100, 230, 190, 340], 90, 270, fill=(40, 90, 170), width=18)
    d.ellipse([215, 170, 297, 215], fill=(30, 70, 140))
    d.ellipse([245, 150, 267, 176], fill=(30, 70, 140))
    d.ellipse([170, 380, 342, 405], fill=(225, 225, 222))
    for x in (200, 256, 312):
        d.ellipse([x - 10, 280, x + 10, 300], fill=(245, 245, 245))
    return img


def apple() -> Image.Image:
    """A fresh red apple on a light table (the reasoning-edit example)."""
    img = Image.new("RGB", (512, 512), (235, 232, 224))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 340, 512, 512], fill=(205, 196, 178))
    d.ellipse([150, 400, 370, 430], fill=(185, 176, 160))
    d.ellipse([140, 180, 300, 420], fill=(196, 28, 36))
    d.ellipse([210, 180, 370, 420], fill=(196, 28, 36))
    d.ellipse([190, 200, 230, 260], fill=(232, 96, 96))
    d.line([(256, 200), (262, 130)], fill=(90, 60, 30), width=8)
    d.ellipse([262, 120, 330, 150], fill=(70, 140, 50))
    return img


SAMPLES = {"deepgen_example_room.png": room, "deepgen_example_teapot.png": teapot, "deepgen_example_apple.png": apple}


def main(argv: list[str]) -> int:
    for path in sorted(ROOT.glob("*.json")):
        thumbnail(path).save(path.with_suffix(".jpg"), quality=88, optimize=True)
        print("wrote", path.with_suffix(".jpg").relative_to(ROOT.parent))
    (ROOT / "input").mkdir(exist_ok=True)
    for name, draw in SAMPLES.items():
        draw().save(ROOT / "input" / name, optimize=True)
        print("wrote", (ROOT / "input" / name).relative_to(ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
