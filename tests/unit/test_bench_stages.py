"""Smoke test of bench/stages.py on the tiny release: what runs where, not how fast."""
from bench import stages


def test_stages_tiny(tiny_layouts, tmp_path):
    r = stages.run(["--model", "tiny", "--release", str(tiny_layouts["diffusers"]), "--json", str(tmp_path / "s.json")])
    calls = {(row["run"], row["stage"]): row.get("calls") for row in r["stages"]}
    assert calls[("T2I", "VLM text")] == 1 and calls[("T2I", "SCB")] == 1 and ("T2I", "ViT") not in calls
    assert calls[("edit, 1 reference", "ViT")] == 1  # one reference: the ViT runs once for pos + neg rows
    assert calls[("edit, 1 reference", "DiT step")] == 1  # batched CFG: one DiT call per step
    # cached re-runs: no encoder work and no second VAE encode of the same reference
    for run in ("T2I cached re-run (seed, cfg)", "edit cached re-run (seed, cfg)"):
        assert not {s for (r_, s) in calls if r_ == run} & {"ViT", "VLM text", "SCB", "VAE encode", "lm_head"}
        assert calls[(run, "DiT step")] == 1 and calls[(run, "VAE decode")] == 1
    assert all(c["encoder_calls_cached"] == 0 and c["encoder_s_full"] > 0 for c in r["cached"])
    d = r["vlm_depth"]
    assert d["layers"] == 36 and len(d["per_layer_s"]) == 36 and 0 < d["skipped_s"] < d["full_forward_s"]
    assert r["lm_head"]["lm_head_shares_embedding_storage"] and r["lm_head"]["extra_bytes_for_lm_head"] == 0
    res = {row["offload"]: row for row in r["residency_gib"]}
    sampling = [res[m]["sampling (DiT)"] for m in ("none", "encoder", "all")]
    assert sampling[0] > sampling[1] > sampling[2] > 0  # the VLM leaves; with "all" the VAE waits too
    assert res["all"]["peak weights GiB"] < res["encoder"]["peak weights GiB"] <= res["none"]["peak weights GiB"]
