"""deepgen_batch.plan: folders, CSV/TSV/JSONL mappings, seeds, sizes, output names."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from deepgen_batch.plan import PlanError, build_plan, derive_seed, fold, output_names, read_mapping, scan_folder


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


def test_folder_plan_seeds_come_from_the_names(tmp_path):
    touch(tmp_path, "x.png", "y.png", "z.png")
    items = build_plan(tmp_path, None, instruction="make it blue", seed_base=2**64 - 2, max_side=256)
    assert [i.input for i in items] == ["x.png", "y.png", "z.png"]
    assert [i.seed for i in items] == [derive_seed(2**64 - 2, n) for n in ("x.png", "y.png", "z.png")]
    assert derive_seed(5, "x.png") == int(hashlib.sha256(b"5:x.png#1").hexdigest()[:16], 16)  # as docs/batch.md says
    assert len({i.seed for i in items}) == 3 and all(0 <= i.seed < 2**64 and i.seed_base == 2**64 - 2 for i in items)
    touch(tmp_path, "a.png", "w.png")  # files added before and between: no other item's seed moves
    again = {i.input: i.seed for i in build_plan(tmp_path, None, instruction="x", seed_base=2**64 - 2)}
    assert all(again[i.input] == i.seed for i in items)
    assert build_plan(tmp_path, None, instruction="x", seed_base=2**64 + 3)[0].seed == derive_seed(3, "a.png")
    assert all(i.instruction == "make it blue" and i.max_side == 256 for i in items)
    assert [i.output for i in items] == ["x.png", "y.png", "z.png"]
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
    assert (a.seed, a.negative, b.seed, b.instruction) == (5, "ugly", derive_seed(7, "b.png"), "y")
    assert (a.seed_base, b.seed_base) == (None, 7)  # the mapping's seed is not derived


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
    names = [i.output for i in build_plan(tmp_path, rows, instruction=None)]
    assert names == ["a_jpg.png", "a_png.png", "a_2.png", "sub/b.png", "c.png", "a_3.png"]


@pytest.mark.parametrize("inputs", [
    ["a.png", "a_png.png"],                        # the first report: both were a_png.png
    ["a.png", "a.jpg", "a_png.png"],               # ... with a stem twin: a_png.png is an input's plain name
    ["foo.png", "foo.PNG"],                        # only the case differs: one file on macOS/Windows
    ["Foo.png", "foo.png", "FOO.jpg"],
    ["sub/x.png", "Sub/x.png", "sub/x.jpg"],       # folders whose names differ in case
    ["x.png/y.png", "x.png"],                      # a folder named like another input's result
    ["a.png", "a.png", "a_2.png"],                 # the 2nd instruction for a.png vs an input a_2.png
    ["caf\u00e9.png", "cafe\u0301.png"],            # NFC vs NFD: one name on macOS
])
def test_output_names_are_injective_case_insensitively(inputs):
    names = output_names(inputs)
    assert len({fold(n) for n in names}) == len(inputs), names
    folders = {fold(str(p)) for n in names for p in Path(n).parents if str(p) != "."}
    assert not folders & {fold(n) for n in names}, names  # no result is a folder another result needs
    assert all(n.endswith(".png") for n in names)
    assert output_names(list(inputs)) == names  # the same every run
    if len(set(inputs)) == len(inputs):  # (repeats are numbered in plan order)
        assert output_names(list(reversed(inputs))) == list(reversed(names))  # not decided by order


def test_output_names_examples():
    assert output_names(["a.png", "a_png.png"]) == ["a.png", "a_png.png"]  # no clash, plain names
    assert output_names(["a.jpg", "a.png"]) == ["a_jpg.png", "a_png.png"]
    foo = output_names(["foo.png", "foo.PNG"])
    assert foo[0].startswith("foo_png_") and foo[1].startswith("foo_PNG_") and len(foo[0]) == len("foo_png_") + 12


def test_names_given_in_earlier_runs_stay(tmp_path):
    # run 1 had only a.png -> a.png; a.jpg arrives later: a.png keeps its result, a.jpg steps aside
    assert output_names(["a.jpg", "a.png"], owned={"a.png": "a.png"}) == ["a_jpg.png", "a.png"]
    # a name another input owns in the manifest is never given away, even if that input left the plan
    assert output_names(["b.png"], owned={"b.png": "b.jpg"}) == ["b_png.png"]


def test_scan_leaves_out_the_output_folder(tmp_path):
    touch(tmp_path, "a.png", "edited/a.png", "edited/sub/b.png", "other/c.png")
    assert scan_folder(tmp_path, recursive=True, exclude=tmp_path / "edited") == ["a.png", "other/c.png"]


def test_long_names_are_cut_to_fit_and_stay_apart():
    long_a, long_b = "x" * 300 + "a.png", "x" * 300 + "b.png"  # alike for their first 300 characters
    names = output_names([long_a, long_b, "\u00e9" * 150 + ".jpg", "d/" + "y" * 250 + ".png"])
    assert all(len(n.rsplit("/", 1)[-1].encode()) <= 200 and n.endswith(".png") for n in names), names
    assert len({fold(n) for n in names}) == 4 and names[3].startswith("d/yyy")
    assert names[2].startswith("\u00e9" * 50) and "\ufffd" not in names[2]  # cut between characters
    assert output_names([long_a, long_b]) == names[:2]  # the same every run
    assert output_names(["a.png", "a.jpg"]) == ["a_png.png", "a_jpg.png"]  # short names as before


def test_backslashes_in_file_names(tmp_path):
    touch(tmp_path, "a\\b.png", "a/b.png")  # on Linux "a\b.png" is one file in the input folder itself
    assert scan_folder(tmp_path, recursive=True) == ["a/b.png", "a\\b.png"]
    items = build_plan(tmp_path, None, instruction="x", recursive=True)
    assert [(i.input, i.source, i.output) for i in items] == [
        ("a/b.png", tmp_path / "a/b.png", "a/b.png"), ("a\\b.png", tmp_path / "a\\b.png", "a\\b.png")]
    rows = [{"filename": "a\\b.png"}, {"filename": "sub\\c.png"}]  # a mapping: the existing file wins, else "\" = "/"
    assert [i.input for i in build_plan(tmp_path, rows, instruction="x")] == ["a\\b.png", "sub/c.png"]


def test_seeds_the_manifest_records_are_kept(tmp_path):
    touch(tmp_path, "a.png", "b.png")
    items = build_plan(tmp_path, None, instruction="x", seed_base=3, seeds={("b.png", "b.png"): 42})
    assert [(i.seed, i.seed_base) for i in items] == [(derive_seed(3, "a.png"), 3), (42, 3)]
    rows = [{"filename": "b.png", "seed": 7}]  # the mapping's seed comes first
    assert build_plan(tmp_path, rows, instruction="x", seeds={("b.png", "b.png"): 42})[0].seed == 7
