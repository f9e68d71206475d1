"""Smoke test of bench/dit.py's engine side on the tiny release (the ComfyUI side: tests/integration)."""
import json

from bench import dit


def test_dit_engine_tiny(tiny_layouts, tmp_path):
    r = dit.main(["--engine", "--release", str(tiny_layouts["diffusers"]), "--size", "64", "--calls", "1",
                  "--json", str(tmp_path / "d.json")])
    assert r["side"] == "engine" and r["load_s"] > 0 and r["comfy_attention"] is None
    for case in ("t2i", "edit"):
        assert 0 < r[f"{case}_call_cpu_s"]["median"] and r[f"{case}_call_s"]["min"] <= r[f"{case}_call_s"]["max"]
    assert json.loads((tmp_path / "d.json").read_text()) == r
