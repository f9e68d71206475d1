"""Smoke test of bench/dtypes.py on the tiny release: both dtypes run, every stage is timed and compared."""
import math

import torch

from bench import dtypes
from deepgen_model import precision


def test_dtypes_tiny(tiny_layouts, tmp_path):
    r = dtypes.run(["--model", "tiny", "--release", str(tiny_layouts["diffusers"]), "--repeat", "1",
                    "--json", str(tmp_path / "d.json")])
    rows = {row["stage"]: row for row in r["rows"]}
    assert list(rows) == list(precision.STAGES)
    for stage, row in rows.items():
        assert row["fp32_s"] > 0 and row["bf16_s"] > 0
        assert 0 < row["own_rel_rms"] < 0.2, (stage, row)  # bf16 differs from fp32, but not wildly
        assert row["image_psnr_db"] > 20 and math.isfinite(row["image_psnr_db"])
        assert row["measured_choice"] in ("fp32", "bf16") and row["pack_policy"] in ("fp32", "bf16")
    assert {tuple(run["bf16"]) for run in r["runs"]} == {(), tuple(sorted(precision.STAGES)), ("vlm",), ("scb",),
                                                         ("dit",)}
    assert 0 < r["whole"]["latent_rel_rms"] < 0.2


def test_set_compute_switches_only_the_named_stages(tiny_layouts):
    pipe = dtypes.load_pipeline("tiny", str(tiny_layouts["diffusers"]))
    dtypes.set_compute(pipe, {"dit"})
    got = {k: precision.compute_dtype_of(m) for k, m in dtypes.modules(pipe).items()}
    assert got == {"vlm": torch.float32, "scb": torch.float32, "dit": torch.bfloat16, "vae": torch.float32}
