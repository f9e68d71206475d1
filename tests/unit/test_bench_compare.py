"""Smoke test of bench/compare.py on the tiny release (no timing assertions: CI boxes are shared)."""
import json

from bench import compare


def test_compare_tiny_alternates_and_breaks_down_by_stage(tiny_layouts, tmp_path, capsys):
    out = tmp_path / "compare.json"
    result = compare.run(["--model", "tiny", "--release", str(tiny_layouts["diffusers"]), "--steps", "2",
                          "--repeat", "2", "--json", str(out)])
    assert [(r["mode"], r["size"]) for r in result["rows"]] == [("t2i", 32), ("edit", 32)]
    for row in result["rows"]:
        assert row["repeats"] == 2 and len(row["ratios"]) == 2
        for key in ("reference_s", "pack_s", "ratio"):
            assert 0 < row[key]["min"] <= row[key]["median"] <= row[key]["max"]
        assert row["load_avg_1m"]["min"] >= 0 and row["other_cpu_cores"]["min"] >= 0
        assert row["max_abs_latent_diff"] < 2e-4  # same weights, same work: the parity tolerance
    for run in result["runs"]:  # the order flips every round: ref first, then pack first
        assert [r["round"] for r in run["runs"]["reference"]] == [0, 1]
        for side in ("reference", "pack"):
            for rec in run["runs"][side]:
                steps = rec["stages"]["DiT step"]
                assert steps["calls"] == 2 and len(steps["each"]) == 2  # batched CFG: one DiT call per step
                assert rec["stages"]["encode"]["calls"] >= 1 and rec["stages"]["decode"]["calls"] == 1
                assert rec["stages"]["VLM text"]["seconds"] <= rec["stages"]["encode"]["seconds"]
                assert ("reference VAE encode" in rec["stages"]) == (run["mode"] == "edit")
    stages = {(s["mode"], s["stage"]) for s in result["stages"]}
    assert {("t2i", "encode"), ("t2i", "DiT step 1"), ("t2i", "DiT step 2"), ("t2i", "decode"), ("t2i", "other"),
            ("edit", "ViT"), ("edit", "reference VAE encode")} <= stages
    assert ("t2i", "reference VAE encode") not in stages
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"])) and saved["environment"]["torch"]
    printed = capsys.readouterr().out
    assert "pack/ref median" in printed and "per stage, both sides" in printed
    # the compute dtype is reported per stage (the CPU policy computes the VLM and the DiT differently)
    assert set(result["compute"]) == {"vlm", "scb", "dit", "vae"}
    assert " ".join(f"{k} {v}" for k, v in result["compute"].items()) in printed
