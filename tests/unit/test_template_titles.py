"""Template browser: every example workflow has a readable, numbered title and a description
(locales/en/main.json), the numbers follow the order nodes/routes.py serves the cards in, and the committed
thumbnails are what scripts/make_thumbnails.py draws from the current workflows and titles."""
import ast
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


def titles() -> dict:
    messages = json.loads((REPO / "locales" / "en" / "main.json").read_text(encoding="utf-8"))["templateWorkflows"]
    return messages["template"]["ComfyUI-DeepGen"]


def test_every_example_workflow_has_a_title_and_a_description():
    messages = json.loads((REPO / "locales" / "en" / "main.json").read_text(encoding="utf-8"))["templateWorkflows"]
    assert sorted(titles()) == STEMS == sorted(messages["templateDescription"]["ComfyUI-DeepGen"])
    numbers = sorted(int(re.match(r"(\d+) · \S", t)[1]) for t in titles().values())
    assert numbers == list(range(1, len(STEMS) + 1))  # a reading order, shown in the titles
    assert all(len(d) > 20 for d in messages["templateDescription"]["ComfyUI-DeepGen"].values())


def test_the_served_order_is_the_numbered_order():
    """nodes/routes.py's EXAMPLE_ORDER (read from the source: nodes/ needs ComfyUI) lists every example once,
    in the titles' numbering. The live order is checked in tests/integration/test_web_routes.py."""
    tree = ast.parse((REPO / "nodes" / "routes.py").read_text(encoding="utf-8"))
    order = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "EXAMPLE_ORDER" for t in node.targets))
    by_number = sorted(titles(), key=lambda stem: int(titles()[stem].split(" ", 1)[0]))
    assert list(order) == by_number


def _make_thumbnails():
    spec = importlib.util.spec_from_file_location("make_thumbnails", REPO / "scripts" / "make_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stem", STEMS)
def test_thumbnail_is_up_to_date(stem):
    """Redrawn in memory and JPEG-encoded as the script does; another Pillow/FreeType may shade glyph edges a
    little differently, so a few strongly different pixels are allowed: a changed title, node or link moves
    thousands (run `python scripts/make_thumbnails.py` after changing a workflow or a title)."""
    buf = io.BytesIO()
    _make_thumbnails().thumbnail(EXAMPLES / f"{stem}.json").save(buf, "JPEG", quality=88, optimize=True)
    drawn = np.asarray(Image.open(buf).convert("RGB")).astype(int)
    with Image.open(EXAMPLES / f"{stem}.jpg") as committed:
        diff = np.abs(np.asarray(committed.convert("RGB")).astype(int) - drawn).max(axis=2)
    assert (diff > 64).sum() < 300, (f"example_workflows/{stem}.jpg is stale ({(diff > 64).sum()} pixels differ): "
                                     "run python scripts/make_thumbnails.py")
