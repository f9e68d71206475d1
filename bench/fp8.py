"""fp8 (e4m3fn) DiT weight storage vs bf16 storage: memory, speed and output difference.

    python bench/fp8.py --model tiny                          # CI smoke: whole pipeline, tiny release
    python bench/fp8.py --model real --size 512 --json fp8_real.json   # CPU: one real-size DiT call (CFG batch 2)

fp8 stores every nn.Linear weight of the DiT in float8_e4m3fn (precision.store_linear_weights) and casts
it per call to the compute dtype (fp32 on CPUs without bf16, bf16 on GPUs) - what ComfyUI's
weight_dtype fp8_e4m3fn does through comfy.ops manual cast. tiny: full T2I images, fp8 vs bf16 storage
(both fp32 compute) and bf16 vs fp32. real: the DiT velocity of one call on random inputs.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import PROMPT, param_bytes, settle, table, tiny_release, write_json


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float().flatten(), b.float().flatten()
    err = a - b
    mse = err.pow(2).mean().item()
    return {"max_abs": err.abs().max().item(), "mean_abs": err.abs().mean().item(),
            "rel_rms": math.sqrt(mse) / max(b.pow(2).mean().sqrt().item(), 1e-12),
            "cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            "psnr_db_0to1": 10 * math.log10(1 / mse) if mse > 0 else float("inf")}


def _timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        settle()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def tiny(args) -> dict:
    from deepgen_model import DeepGenPipeline
    from deepgen_model.precision import apply_manual_cast, store_linear_weights

    release = tiny_release(args.release)
    fp32 = DeepGenPipeline.from_pretrained(release, dtype="fp32", device="cpu")
    variants = {"fp32": fp32}
    for name in ("bf16", "fp8_e4m3fn"):
        pipe = copy.deepcopy(fp32)  # same weights; only the DiT's storage changes
        pipe.transformer.dit.to(torch.bfloat16)
        if name != "bf16":
            store_linear_weights(pipe.transformer.dit, name)
        apply_manual_cast(pipe.transformer.dit, torch.float32)
        variants[name] = pipe
    cond = fp32.encode(PROMPT, "")
    rows, images = [], {}
    for name, pipe in variants.items():
        sec, out = _timed(lambda: pipe(conditioning=cond, width=args.size, height=args.size, steps=args.steps, seed=3),
                          args.repeat)
        images[name] = out.images
        rows.append({"dit_weights": name, "dit_mib": param_bytes(pipe.transformer) / 2**20, "sample_s": sec})
    for row in rows:
        row.update({f"vs_bf16_{k}": v for k, v in _diff(images[row["dit_weights"]], images["bf16"]).items()})
        row.update({f"vs_fp32_{k}": v for k, v in _diff(images[row["dit_weights"]], images["fp32"]).items()})
    return {"what": f"tiny T2I images {args.size}px, {args.steps} steps, fp32 compute", "rows": rows}


def real(args) -> dict:
    from accelerate import init_empty_weights
    from diffusers import SD3Transformer2DModel

    from bench.common import materialise
    from deepgen_model import DeepGenTransformer, configs
    from deepgen_model.precision import apply_manual_cast, store_linear_weights

    with init_empty_weights(include_buffers=False):
        dit = SD3Transformer2DModel(**configs.get("dit"))
    dit = DeepGenTransformer(apply_manual_cast(materialise(dit, torch.bfloat16), torch.float32))
    g = torch.Generator().manual_seed(0)
    h = args.size // 8
    x = torch.randn(2, 16, h, h, generator=g)
    seq = torch.randn(2, args.context, dit.dit.config.joint_attention_dim, generator=g)
    pooled = torch.randn(2, dit.dit.config.pooled_projection_dim, generator=g)
    t = torch.tensor([500.0, 500.0])
    rows, outs = [], {}
    for name in ("bf16", "fp8_e4m3fn"):
        if name != "bf16":
            store_linear_weights(dit.dit, name)  # manual cast already covers any stored dtype
        with torch.no_grad():
            sec, outs[name] = _timed(lambda: dit(x, t, seq, pooled), args.repeat)
        rows.append({"dit_weights": name, "dit_mib": param_bytes(dit) / 2**20, "dit_call_s": sec})
    rows[1].update({f"vs_bf16_{k}": v for k, v in _diff(outs["fp8_e4m3fn"], outs["bf16"]).items()})
    return {"what": f"real-size DiT, one call, batch 2 (CFG), {args.size}px + {args.context} context tokens, "
                    "random weights N(0, 0.02), fp32 compute", "rows": rows}


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "real"])
    ap.add_argument("--release", default=None, help="tiny only: an existing fixture release folder")
    ap.add_argument("--size", type=int, default=None, help="default 32 tiny, 512 real")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--context", type=int, default=170, help="real: context tokens (T2I: ~40 prompt + 128 queries)")
    ap.add_argument("--repeat", type=int, default=None, help="default 3 tiny, 2 real")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.size = args.size or (32 if args.model == "tiny" else 512)
    args.repeat = args.repeat or (3 if args.model == "tiny" else 2)
    result = tiny(args) if args.model == "tiny" else real(args)
    speed = "sample_s" if args.model == "tiny" else "dit_call_s"
    cols = [("dit_weights", "DiT weights", ""), ("dit_mib", "DiT MiB", "{:.1f}"), (speed, "s", "{:.3f}"),
            ("vs_bf16_max_abs", "max|d| vs bf16", "{:.2e}"), ("vs_bf16_rel_rms", "rel RMS vs bf16", "{:.2e}"),
            ("vs_bf16_cosine", "cos vs bf16", "{:.5f}")]
    if args.model == "tiny":
        cols.append(("vs_bf16_psnr_db_0to1", "PSNR vs bf16 dB", "{:.1f}"))
    print(table(result["rows"], cols, result["what"] + f" (best of {args.repeat}, threads {torch.get_num_threads()})"))
    write_json(args.json, {"model": args.model, **result})
    return result


if __name__ == "__main__":
    run()
