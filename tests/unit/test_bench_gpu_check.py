"""bench/gpu_check.py --dry-run: the one-shot GPU check's code path on a CPU with the tiny release."""
import json

from bench import gpu_check


def test_gpu_check_dry_run(tiny_layouts, tmp_path):
    out = tmp_path / "gpu.json"
    result = gpu_check.run(["--dry-run", "--release", str(tiny_layouts["diffusers"]), "--size", "32",
                            "--json", str(out)])
    phases = result["phases"]
    assert set(phases) == {"bf16", "8bit", "8gb"}
    assert all(p["returncode"] == 0 for p in phases.values()), {k: p.get("output_tail") for k, p in phases.items()}
    rows = phases["bf16"]["compare"]["rows"]
    assert {(r["mode"], r["size"]) for r in rows} == {("t2i", 32), ("edit", 32)}
    mfu = {r["mode"]: r for r in phases["bf16"]["mfu"]}
    assert mfu["edit"]["dit_flops_per_step"] > mfu["t2i"]["dit_flops_per_step"] > 0  # references add tokens
    assert all(r["s_per_step"] > 0 and r["mfu"] is None for r in mfu.values())  # no peak known for a CPU
    calls = phases["8bit"]["calls"]
    assert [c["mode"] for c in calls] == ["t2i", "edit"] and all(c["seconds"] > 0 for c in calls)
    variants = phases["8gb"]["variants"]
    assert [v["dit_weights"] for v in variants] == ["bf16", "fp8_e4m3fn"]
    assert all("out_of_memory" not in c for v in variants for c in v["calls"])
    saved = json.loads(out.read_text())
    assert saved["dry_run"] and saved["environment"]["torch"]
