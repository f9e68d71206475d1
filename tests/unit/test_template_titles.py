"""Template browser: every example workflow's file name is its human, numbered title (what every frontend
captions the card with), each has a description (locales/en/main.json), and the committed thumbnails are
what scripts/make_thumbnails.py draws from the current workflows and descriptions."""
import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows"
STEMS = sorted(p.stem for p in EXAMPLES.glob("*.json"))
TITLE = re.compile(r"DeepGen (\d+) - [A-Z][^_/\\:*?\"<>|.#%]+")  # also a safe file name on every system
CARD_CHARS = 32  # frontend 1.32.9 clamps a card's title to one line of about this many characters


def messages() -> dict:
    return json.loads((REPO / "locales" / "en" / "main.json").read_text(encoding="utf-8"))["templateWorkflows"]


def test_every_example_is_named_by_its_numbered_title():
    assert len(STEMS) >= 8
    assert all(TITLE.fullmatch(stem) and len(stem) <= CARD_CHARS for stem in STEMS), STEMS
    numbers = sorted(int(TITLE.fullmatch(stem)[1]) for stem in STEMS)
    assert numbers == list(range(1, len(STEMS) + 1))  # a reading order, shown in the titles


def test_every_example_has_a_description_and_the_category_a_name():
    descriptions = messages()["templateDescription"]["ComfyUI-DeepGen"]
    assert sorted(descriptions) == STEMS
    assert all(len(d) > 20 and d.endswith(".") for d in descriptions.values())
    # the sidebar item, under the folder names the pack is installed as (git clone, registry)
    assert set(messages()["category"].values()) == {"DeepGen 1.0"}


def _make_thumbnails():
    spec = importlib.util.spec_from_file_location("make_thumbnails", REPO / "scripts" / "make_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stem", STEMS)
def test_thumbnail_is_up_to_date(stem):
    """Redrawn in memory and JPEG-encoded as the script does; another Pillow/FreeType may shade glyph edges a
    little differently, so a few strongly different pixels are allowed: a changed title, node or link moves
    thousands (run `python scripts/make_thumbnails.py` after changing a workflow or a description)."""
    buf = io.BytesIO()
    _make_thumbnails().thumbnail(EXAMPLES / f"{stem}.json").save(buf, "JPEG", quality=88, optimize=True)
    drawn = np.asarray(Image.open(buf).convert("RGB")).astype(int)
    with Image.open(EXAMPLES / f"{stem}.jpg") as committed:
        diff = np.abs(np.asarray(committed.convert("RGB")).astype(int) - drawn).max(axis=2)
    assert (diff > 64).sum() < 300, (f"example_workflows/{stem}.jpg is stale ({(diff > 64).sum()} pixels differ): "
                                     "run python scripts/make_thumbnails.py")
