"""Pack vs the reference loop on the SAME weights, in the same run: seconds and peak memory per image.

    python bench/compare.py --model tiny                                   # CI smoke (fixture release)
    python bench/compare.py --model real --size 256 --steps 2 --json compare_real.json   # CPU, random weights
    python bench/compare.py --model PATH/DeepGen-1.0-diffusers --device cuda --size 512 1024 --steps 50

The reference loop (bench/reference_loop.py) is an independent plain implementation of the official
generate(): VLM + bridge on every call, batched CFG, diffusers' Euler scheduler, everything resident.
tiny: each side loads the fixture release folder itself (fp32). real: real-size architectures with
random bf16 weights (fp32 compute on CPU), which both sides share. A release PATH: the pack loads it
(dtype auto, --quant for the VLM) and the reference runs over the pack's modules. Each configuration
runs reference and pack alternately --repeat times; the table shows the fastest of each and the
largest latent difference between the two (a fidelity check riding along).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (EDIT_PROMPT, PROMPT, Memory, measured, real_pipeline, reference_for, reference_image,
                          settle, table, tiny_release, write_json)


def load(model: str, device: str, quant: str | None, release: str | None = None):
    from deepgen_model import DeepGenPipeline

    if model == "tiny":
        from bench.reference_loop import ReferenceDeepGen

        release = tiny_release(release)
        return DeepGenPipeline.from_pretrained(release, dtype="fp32", device=device), ReferenceDeepGen(release, device)
    if model == "real":
        pipe, _ = real_pipeline()
        return pipe, reference_for(pipe)
    pipe = DeepGenPipeline.from_pretrained(model, device=device, quantization=quant)
    compute = pipe.transformer.dit.dtype
    from deepgen_model.precision import compute_dtype_of

    return pipe, reference_for(pipe, compute_dtype_of(pipe.transformer.dit) or compute)


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | real | path of a diffusers release folder")
    ap.add_argument("--release", default=None, help="tiny only: an existing fixture release folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, nargs="+", default=None, help="square sizes (default 32 tiny, 256 otherwise)")
    ap.add_argument("--steps", type=int, default=None, help="default 3 tiny, 2 real, 50 release")
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--modes", nargs="+", default=["t2i", "edit"], choices=["t2i", "edit"])
    ap.add_argument("--repeat", type=int, default=None, help="alternating runs per side (default 3 tiny, else 1)")
    ap.add_argument("--quant", default=None, choices=[None, "8bit", "nf4"], help="VLM quantization (release only)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = args.model == "tiny"
    sizes = args.size or ([32] if tiny else [256] if args.model == "real" else [512])
    steps = args.steps or (3 if tiny else 2 if args.model == "real" else 50)
    repeat = args.repeat or (3 if tiny else 1)
    from deepgen_model.constants import EDIT_NEGATIVE

    mem = Memory(args.device)
    pipe, ref = load(args.model, args.device, args.quant, args.release)
    rows = []
    for mode in args.modes:
        for size in sizes:
            images = [reference_image(size)] if mode == "edit" else None
            prompt, negative = (EDIT_PROMPT, EDIT_NEGATIVE) if images else (PROMPT, "")
            common = dict(images=images, width=size, height=size, steps=steps, seed=1, max_side=size)
            best, peaks, outs = {}, {"reference": 0.0, "pack": 0.0}, {}
            warmup = 1 if tiny else 0  # tiny: one untimed round first (lazy initialisation dominates there)
            for round_ in range(warmup + repeat):
                for side in ("reference", "pack"):
                    settle()
                    row = {}
                    with measured(mem, row):
                        if side == "reference":
                            outs[side] = ref.generate(prompt, negative, cfg=args.cfg, **common)[0]
                        else:
                            outs[side] = pipe(prompt, negative, cfg_scale=args.cfg, **common).latents
                    if round_ >= warmup:
                        best[side] = min(best.get(side, float("inf")), row["seconds"])
                        peaks[side] = max(peaks[side], row["peak_gib"])
            rows.append({"mode": mode, "size": size, "steps": steps, "cfg": args.cfg,
                         "reference_s": best["reference"], "pack_s": best["pack"],
                         "ratio": best["pack"] / best["reference"],
                         "reference_peak_gib": peaks["reference"], "pack_peak_gib": peaks["pack"],
                         "max_abs_latent_diff": (outs["pack"].float().cpu() - outs["reference"].float().cpu()).abs().max().item()})
    cols = [("mode", "mode", ""), ("size", "px", ""), ("steps", "steps", ""), ("reference_s", "reference s", "{:.3f}"),
            ("pack_s", "pack s", "{:.3f}"), ("ratio", "pack/ref", "{:.3f}"),
            ("reference_peak_gib", "ref peak GiB", "{:.2f}"), ("pack_peak_gib", "pack peak GiB", "{:.2f}"),
            ("max_abs_latent_diff", "max |dlatent|", "{:.1e}")]
    memory_kind = "CUDA allocated" if mem.cuda else "process RSS"
    print(table(rows, cols, f"pack vs reference loop ({args.model}, {args.device}, {memory_kind}, "
                            f"best of {repeat}, threads {torch.get_num_threads()})"))
    result = {"model": args.model, "device": args.device, "repeat": repeat, "memory": memory_kind, "rows": rows}
    write_json(args.json, result)
    return result


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
