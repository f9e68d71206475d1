"""Smoke test of bench/compare.py on the tiny release (no timing assertions: CI boxes are shared)."""
import json

from bench import compare


def test_compare_tiny_runs_and_both_loops_agree(tiny_layouts, tmp_path, capsys):
    out = tmp_path / "compare.json"
    result = compare.run(["--model", "tiny", "--release", str(tiny_layouts["diffusers"]), "--steps", "2",
                          "--repeat", "1", "--json", str(out)])
    assert [(r["mode"], r["size"]) for r in result["rows"]] == [("t2i", 32), ("edit", 32)]
    for row in result["rows"]:
        assert row["reference_s"] > 0 and row["pack_s"] > 0 and row["ratio"] > 0
        assert row["max_abs_latent_diff"] < 2e-4  # same weights, same work: the parity tolerance
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"])) and saved["environment"]["torch"]
    assert "pack/ref" in capsys.readouterr().out
