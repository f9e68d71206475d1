"""Smoke tests of bench/fp8.py and bench/memory.py on tiny models (sizes and differences, no timings)."""
from bench import fp8, memory


def test_fp8_tiny(tiny_layouts, tmp_path):
    r = fp8.run(["--model", "tiny", "--release", str(tiny_layouts["diffusers"]), "--steps", "2", "--repeat", "1",
                 "--json", str(tmp_path / "f.json")])
    rows = {row["dit_weights"]: row for row in r["rows"]}
    assert rows["bf16"]["dit_mib"] < 0.51 * rows["fp32"]["dit_mib"]
    assert rows["fp8_e4m3fn"]["dit_mib"] < 0.8 * rows["bf16"]["dit_mib"]  # tiny: the position table weighs in
    assert rows["bf16"]["vs_bf16_max_abs"] == 0
    assert rows["fp8_e4m3fn"]["vs_bf16_max_abs"] > 0  # lossy: reported, not hidden
    assert rows["fp8_e4m3fn"]["vs_bf16_cosine"] > 0.9


def test_memory_tiny(tmp_path):
    r = memory.run(["--model", "tiny", "--components", "scb", "dit", "--json", str(tmp_path / "m.json")])
    rows = {(row["component"], row["storage"]): row for row in r["rows"]}
    for name in ("scb", "dit"):
        assert abs(rows[(name, "bf16")]["bytes_gib"] * 2 - rows[(name, "fp32")]["bytes_gib"]) < 1e-6
        for row in (rows[(name, "bf16")], rows[(name, "fp32")]):
            assert abs(row["bytes_gib"] - row["measured_tensor_gib"]) < 1e-6  # the prediction is what gets built
    assert rows[("dit", "fp8_e4m3fn")]["measured_tensor_gib"] < rows[("dit", "bf16")]["measured_tensor_gib"]
