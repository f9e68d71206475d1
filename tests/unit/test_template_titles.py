"""Template browser cards: every example workflow has a readable, numbered title and a description
(locales/en/main.json, merged by ComfyUI's /i18n into the frontend's templateWorkflows messages)."""
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_example_workflow_has_a_title_and_a_description():
    messages = json.loads((REPO / "locales" / "en" / "main.json").read_text(encoding="utf-8"))["templateWorkflows"]
    stems = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    titles = messages["template"]["ComfyUI-DeepGen"]
    assert sorted(titles) == stems == sorted(messages["templateDescription"]["ComfyUI-DeepGen"])
    numbers = sorted(int(re.match(r"(\d+) · \S", t)[1]) for t in titles.values())
    assert numbers == list(range(1, len(stems) + 1))  # a reading order, shown in the titles
    assert all(len(d) > 20 for d in messages["templateDescription"]["ComfyUI-DeepGen"].values())
