"""deepgen_batch.plan: folders, CSV/TSV/JSONL mappings, seeds, sizes, output names."""
from __future__ import annotations

import json

import pytest

from deepgen_batch.plan import PlanError, build_plan, read_mapping, scan_folder


def touch(folder, *names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_scan_folder_takes_images_sorted(tmp_path):
    touch(tmp_path, "b.PNG", "a.jpg", "notes.txt", ".hidden.png", "sub/c.webp")
    assert scan_folder(tmp_path) == ["a.jpg", "b.PNG"]
    assert scan_folder(tmp_path, recursive=True) == ["a.jpg", "b.PNG", "sub/c.webp"]
    with pytest.raises(PlanError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_folder_plan_seeds_are_base_plus_index_64_bit(tmp_path):
    touch(tmp_path, "x.png", "y.png", "z.png")
    items = build_plan(tmp_path, None, instruction="make it blue", seed_base=2**64 - 2, max_side=256)
    assert [i.input for i in items] == ["x.png", "y.png", "z.png"]
    assert [i.seed for i in items] == [2**64 - 2, 2**64 - 1, 0]  # wraps within 64 bits
    assert all(i.instruction == "make it blue" and i.max_side == 256 for i in items)
    assert [i.output_stem for i in items] == ["x", "y", "z"]
    assert items[0].source == tmp_path / "x.png"
    with pytest.raises(PlanError, match="--instruction"):
        build_plan(tmp_path, None, instruction=None)


def test_csv_mapping_with_aliases_seed_and_size(tmp_path):
    path = tmp_path / "edits.csv"
    path.write_text("Image,Prompt,seed,max_side,width,height\n"
                    "cat.png,\"add a hat, a red one\",18446744073709551615,,,\n"
                    "dog.jpg,,0x10,384,512,256\n"
                    ",,,,,\n", encoding="utf-8")
    rows = read_mapping(path)
    assert len(rows) == 2  # blank line ignored
    items = build_plan(tmp_path, rows, instruction="fallback", seed_base=100, max_side=512)
    cat, dog = items
    assert (cat.instruction, cat.seed, cat.max_side, cat.width) == ("add a hat, a red one", 2**64 - 1, 512, None)
    assert (dog.instruction, dog.seed, dog.max_side, dog.width, dog.height) == ("fallback", 16, 384, 512, 256)


def test_tsv_and_jsonl_mappings(tmp_path):
    (tmp_path / "m.tsv").write_text("filename\tinstruction\na.png\tone\n")
    assert read_mapping(tmp_path / "m.tsv")[0]["instruction"] == "one"
    lines = [{"filename": "a.png", "instruction": "x", "seed": 5, "negative": "ugly"}, {"file": "b.png", "edit": "y"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    a, b = build_plan(tmp_path, read_mapping(tmp_path / "m.jsonl"), instruction=None, seed_base=7)
    assert (a.seed, a.negative, b.seed, b.instruction) == (5, "ugly", 8, "y")


@pytest.mark.parametrize("content, message", [
    ("name,instruction\na.png,x\n", "header with a 'filename' column"),
    ("filename,seed\na.png,abc\n", r"edits.csv:2: seed 'abc' is not an integer"),
    ("filename,seed\na.png,18446744073709551616\n", "outside 0 .. 2\\*\\*64-1"),
    ("filename,width\na.png,500\n", "width 500 must be a positive multiple of 16"),
    ("filename,max_side\na.png,48\n", "max_side 48 must be a positive multiple of 32"),
    ("filename,instruction\n,x\n", "no file name"),
])
def test_csv_errors_name_the_line(tmp_path, content, message):
    (tmp_path / "edits.csv").write_text(content)
    with pytest.raises(PlanError, match=message):
        read_mapping(tmp_path / "edits.csv")


def test_jsonl_errors(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"filename": "a.png"}\n[1, 2]\n')
    with pytest.raises(PlanError, match="m.jsonl:2: expected a JSON object"):
        read_mapping(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text("{oops\n")
    with pytest.raises(PlanError, match="m.jsonl:1: not a JSON object"):
        read_mapping(tmp_path / "m.jsonl")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(PlanError, match="use .csv, .tsv or .jsonl"):
        read_mapping(tmp_path / "m.xlsx")


def test_plan_rejects_paths_outside_the_folder_and_missing_instructions(tmp_path):
    with pytest.raises(PlanError, match="relative to the input folder"):
        build_plan(tmp_path, [{"filename": "../secret.png", "instruction": "x"}], instruction=None)
    with pytest.raises(PlanError, match="a.png: no instruction"):
        build_plan(tmp_path, [{"filename": "a.png", "instruction": None}], instruction=None)


def test_output_names_never_collide(tmp_path):
    rows = [{"filename": f, "instruction": t} for f, t in
            [("a.jpg", "1"), ("a.png", "2"), ("a.png", "3"), ("sub/b.png", "4"), ("c.png", "5"), ("a.png", "6")]]
    stems = [i.output_stem for i in build_plan(tmp_path, rows, instruction=None)]
    assert stems == ["a_jpg", "a_png", "a_png_2", "sub/b", "c", "a_png_3"]
    assert len(set(stems)) == len(stems)
