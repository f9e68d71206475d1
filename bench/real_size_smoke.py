"""Real-size smoke check: the released architectures with random weights, one sampling step.

    python bench/real_size_smoke.py [--size 256] [--steps 1] [--json out.json]

Builds Qwen2.5-VL-3B, the SCB connector, the SD3.5-M Kontext DiT and the SD3 VAE at their real sizes
(docs/inference.md#components) without initialising them (accelerate.init_empty_weights, then random bf16 weights), runs
text-to-image and a one-reference edit through DeepGenPipeline on the CPU with bf16 storage and
fp32 compute, and prints time and peak RSS per stage. No weights are downloaded; outputs are noise.

Tokenizer: the tiny offline test tokenizer (deepgen_model/tiny.py) with the VLM's special-token ids
set to its own, so prompt token counts are not Qwen's; the image-token counts are exact.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.common import build_real  # noqa: E402
from deepgen_model import DeepGenPipeline  # noqa: E402
from deepgen_model import configs  # noqa: E402
from deepgen_model.precision import apply_manual_cast  # noqa: E402
from deepgen_model.vae import decode  # noqa: E402


class PeakRSS:
    """Samples this process's RSS every 20 ms; .peak() since the last reset."""

    def __init__(self):
        self._proc, self._peak, self._stop = psutil.Process(), 0, False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop:
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def reset(self):
        self._peak = self._proc.memory_info().rss

    def peak_gib(self) -> float:
        return max(self._peak, self._proc.memory_info().rss) / 2**30


def build(dtype: torch.dtype):
    t = time.perf_counter()
    parts = build_real(dtype)
    return parts["tokenizer"], [parts[k] for k in ("vlm", "scb", "dit", "vae")], {"materialise": time.perf_counter() - t}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rss = PeakRSS()
    tokenizer, (vlm, scb, dit, vae), timings = build(torch.bfloat16)
    for m in (vlm, scb, dit, vae):
        apply_manual_cast(m, torch.float32)  # bf16 storage, fp32 compute (engine-feasibility §3)
    pipe = DeepGenPipeline(vlm, tokenizer, scb, dit, vae, configs.get("scheduler"))
    rows = [("materialise all weights (bf16)", timings["materialise"], rss.peak_gib())]

    def stage(name, fn):
        rss.reset()
        t = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t, rss.peak_gib()))
        return out

    size, steps = args.size, args.steps
    prompt = "a Delft-blue vase holding the flower that symbolises the Netherlands, studio light"
    cond = stage("T2I encode: VLM + SCB (pos+neg)", lambda: pipe.encode(prompt))
    out = stage(f"T2I {steps} DiT step(s) with CFG + VAE decode, {size}px",
                lambda: pipe(conditioning=cond, width=size, height=size, steps=steps, seed=0))
    stage(f"  of which VAE decode {size}px", lambda: decode(pipe.vae, out.latents))
    ref = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(0))
    econd = stage(f"edit encode: ViT + VLM + SCB, 1 ref {size}px",
                  lambda: pipe.encode("make it night", images=[ref], max_side=size))
    stage(f"edit {steps} DiT step(s) with CFG + 1 ref + VAE encode/decode",
          lambda: pipe(conditioning=econd, steps=steps, seed=0))

    width = max(len(r[0]) for r in rows)
    print(f"{'stage'.ljust(width)}  seconds  peak RSS GiB")
    for name, sec, peak in rows:
        print(f"{name.ljust(width)}  {sec:7.1f}  {peak:12.2f}")
    print(f"tokens: T2I context {cond.seq.shape[1]}, edit context {econd.seq.shape[1]}; threads {torch.get_num_threads()}")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "steps": steps, "threads": torch.get_num_threads(),
                                         "rows": [dict(stage=n, seconds=s, peak_rss_gib=p) for n, s, p in rows]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
