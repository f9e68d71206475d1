"""CPU compute dtype per stage: fp32 vs bf16 compute over the same bf16-stored weights, speed and fidelity.

    python bench/dtypes.py --model tiny                                      # CI smoke
    python bench/dtypes.py --model real --size 256 --json dtypes_real.json   # real size, random weights

Every run is one 1-reference edit, which exercises every stage (ViT + VLM text, SCB connector, reference
VAE encode, DiT step, VAE decode), on ONE set of bf16-stored weights; only the compute dtype changes
(precision.apply_manual_cast: fp32 = weights cast per call; bf16 = computed as stored).

- Speed: all stages in fp32 and all in bf16, alternately (the order flips every round), --repeat
  rounds; each stage's median time in each, and the machine load of every run.
- Fidelity: each stage alone in bf16 (the others fp32), against the all-fp32 run: the relative RMS
  difference of that stage's OWN output (VLM: the stacked hidden states the SCB reads; SCB: the
  DiT context; DiT: the first step's velocity; VAE: the reference latent and the decoded image of the
  fp32 latents), and what it does to the final latents and image. Then all stages in bf16.
- Decision per stage: bf16 where it is faster AND its own-output difference is within
  precision.CPU_BF16_MAX_REL_RMS; printed next to the pack's policy (precision.CPU_BF16_STAGES).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (EDIT_PROMPT, Memory, Stages, machine_load, measured, real_pipeline, reference_image,
                          settle, table, tiny_release, write_json)

STAGE_TIMERS = {"vlm": ("ViT", "VLM text"), "scb": ("SCB",), "dit": ("DiT step",),
                "vae": ("VAE encode", "VAE decode")}


def load_pipeline(model: str, release: str | None):
    from deepgen_model import DeepGenPipeline

    if model == "tiny":
        return DeepGenPipeline.from_pretrained(tiny_release(release), dtype="bf16", device="cpu")
    if model == "real":
        return real_pipeline(torch.bfloat16)[0]
    return DeepGenPipeline.from_pretrained(model, dtype="bf16", device="cpu")


def modules(pipe) -> dict:
    return {"vlm": pipe.vlm, "scb": pipe.scb, "dit": pipe.transformer, "vae": pipe.vae}


def set_compute(pipe, bf16_stages) -> None:
    """Stages in `bf16_stages` compute in bf16 (as stored), the others in fp32 (manual cast)."""
    from deepgen_model.precision import apply_manual_cast

    for stage, module in modules(pipe).items():
        apply_manual_cast(module, torch.bfloat16 if stage in bf16_stages else torch.float32)


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def instrument(pipe, mem: Memory) -> Stages:
    from deepgen_model.compat import vlm_parts

    visual, text = vlm_parts(pipe.vlm)
    st = Stages(mem)
    st.wrap(visual, "forward", "ViT").wrap(text, "forward", "VLM text").wrap(pipe.scb, "forward", "SCB")
    st.wrap(pipe.transformer, "forward", "DiT step").wrap(pipe.vae, "encode", "VAE encode")
    return st.wrap(pipe.vae, "decode", "VAE decode")


class Capture:
    """The first output of the DiT and the SCB's input/output in a run (forward hooks)."""

    def __init__(self, pipe):
        self.data, self._handles = {}, []
        self._handles.append(pipe.scb.register_forward_hook(self._scb))
        self._handles.append(pipe.transformer.register_forward_hook(self._dit))

    def _scb(self, module, args, out):
        self.data["vlm hidden states"] = args[0].detach().float().clone()
        self.data["context"] = out[0].detach().float().clone()

    def _dit(self, module, args, out):
        self.data.setdefault("velocity", out.detach().float().clone())

    def take(self) -> dict:
        out, self.data = self.data, {}
        return out

    def close(self):
        for h in self._handles:
            h.remove()


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | real | path of a diffusers release folder")
    ap.add_argument("--release", default=None, help="tiny only: an existing fixture release folder")
    ap.add_argument("--size", type=int, default=None, help="square size (default 32 tiny, 256 otherwise)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="alternating fp32/bf16 rounds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from deepgen_model import precision
    from deepgen_model.vae import decode, encode_reference

    size = args.size or (32 if args.model == "tiny" else 256)
    mem = Memory("cpu")
    pipe = load_pipeline(args.model, args.release)
    st, cap = instrument(pipe, mem), Capture(pipe)
    image = [reference_image(size)]

    def edit(bf16_stages) -> dict:
        set_compute(pipe, bf16_stages)
        pipe._ref_cache = None  # every run encodes its reference again (the VAE encode is a stage here)
        settle()
        rec = {"bf16": sorted(bf16_stages)}
        st.take()
        cap.take()
        with machine_load(rec), measured(mem, rec):
            out = pipe(EDIT_PROMPT, images=image, steps=args.steps, seed=0, max_side=size)
        rec["stages"], rec["captured"] = st.take(), cap.take()
        rec["latents"], rec["images"] = out.latents.float(), out.images.float()
        rec["reference_latent"] = pipe._ref_cache[2][0].float()
        print(f"  bf16 stages {rec['bf16']}: {rec['seconds']:.2f} s (load {rec['load_avg_1m']}, "
              f"others {rec['other_cpu_cores']} cores)", flush=True)
        rec["references"] = out.conditioning.references
        return rec

    timed = {"fp32": [], "bf16": []}
    try:
        if args.model == "tiny":  # one untimed run: lazy initialisation dominates a tiny model
            edit(set())
        for round_ in range(args.repeat):
            for kind in ("fp32", "bf16") if round_ % 2 == 0 else ("bf16", "fp32"):
                timed[kind].append(edit(set(precision.STAGES) if kind == "bf16" else set()))
        base = timed["fp32"][-1]
        single = {stage: edit({stage}) for stage in ("vlm", "scb", "dit")}
        set_compute(pipe, {"vae"})
        vae_decoded = decode(pipe.vae, base["latents"])
        vae_latent = encode_reference(pipe.vae, base["references"][0])
    finally:
        st.restore()
        cap.close()
        set_compute(pipe, set())

    def stage_seconds(records, stage):
        return [sum(r["stages"].get(n, {}).get("seconds", 0.0) for n in STAGE_TIMERS[stage]) for r in records]

    own = {"vlm": rel_rms(single["vlm"]["captured"]["vlm hidden states"], base["captured"]["vlm hidden states"]),
           "scb": rel_rms(single["scb"]["captured"]["context"], base["captured"]["context"]),
           "dit": rel_rms(single["dit"]["captured"]["velocity"], base["captured"]["velocity"]),
           "vae": max(rel_rms(vae_latent, base["reference_latent"]), rel_rms(vae_decoded, base["images"]))}
    own_what = {"vlm": "stacked hidden states", "scb": "DiT context", "dit": "velocity, step 1",
                "vae": "reference latent / decoded image (worse of the two)"}
    rows = []
    for stage in precision.STAGES:
        f32, b16 = stage_seconds(timed["fp32"], stage), stage_seconds(timed["bf16"], stage)
        end = single.get(stage)
        row = {"stage": stage, "fp32_s": statistics.median(f32), "bf16_s": statistics.median(b16),
               "fp32_range": [min(f32), max(f32)], "bf16_range": [min(b16), max(b16)],
               "own_output": own_what[stage], "own_rel_rms": own[stage],
               "latent_rel_rms": rel_rms(end["latents"], base["latents"]) if end else None,
               "image_psnr_db": psnr(end["images"], base["images"]) if end else psnr(vae_decoded, base["images"])}
        row["speedup"] = row["fp32_s"] / row["bf16_s"] if row["bf16_s"] else None
        row["measured_choice"] = ("bf16" if row["bf16_s"] < row["fp32_s"] and own[stage] <= precision.CPU_BF16_MAX_REL_RMS
                                  else "fp32")
        row["pack_policy"] = "bf16" if stage in precision.CPU_BF16_STAGES else "fp32"
        rows.append(row)
    every = timed["bf16"][-1]
    whole = {"fp32_s": statistics.median(r["seconds"] for r in timed["fp32"]),
             "bf16_s": statistics.median(r["seconds"] for r in timed["bf16"]),
             "latent_rel_rms": rel_rms(every["latents"], base["latents"]),
             "image_psnr_db": psnr(every["images"], base["images"]),
             "image_max_abs": (every["images"] - base["images"]).abs().max().item()}
    loads = [r for rs in timed.values() for r in rs] + list(single.values())
    load = {"load_avg_1m": [min(r["load_avg_1m"] for r in loads), max(r["load_avg_1m"] for r in loads)],
            "other_cpu_cores_median": statistics.median(r["other_cpu_cores"] for r in loads)}

    print(table(rows, [("stage", "stage", ""), ("fp32_s", "fp32 s", "{:.3f}"), ("bf16_s", "bf16 s", "{:.3f}"),
                       ("speedup", "fp32/bf16", "{:.2f}"), ("own_output", "own output", ""),
                       ("own_rel_rms", "rel RMS vs fp32", "{:.2e}"), ("latent_rel_rms", "latents rel RMS", "{:.2e}"),
                       ("image_psnr_db", "image PSNR dB", "{:.1f}"), ("measured_choice", "measured", ""),
                       ("pack_policy", "pack", "")],
                f"CPU compute dtype per stage ({args.model}, {size}² edit, {args.steps} step(s), bf16 weights, "
                f"native bf16: {precision.cpu_has_native_bf16()}, bound {precision.CPU_BF16_MAX_REL_RMS:.0%}, "
                f"{args.repeat} alternating rounds, threads {torch.get_num_threads()})"))
    print(f"whole edit: fp32 {whole['fp32_s']:.2f} s, bf16 {whole['bf16_s']:.2f} s; all-bf16 vs all-fp32: latents rel "
          f"RMS {whole['latent_rel_rms']:.2e}, image PSNR {whole['image_psnr_db']:.1f} dB, max |d| "
          f"{whole['image_max_abs']:.3f}; load avg {load['load_avg_1m'][0]:.1f}-{load['load_avg_1m'][1]:.1f}, "
          f"other processes {load['other_cpu_cores_median']:.2f} cores (median)")
    tensors = ("captured", "latents", "images", "reference_latent", "references")
    strip = lambda r: {k: v for k, v in r.items() if k not in tensors}  # noqa: E731
    result = {"model": args.model, "size": size, "steps": args.steps, "repeat": args.repeat,
              "native_bf16": precision.cpu_has_native_bf16(), "bound_rel_rms": precision.CPU_BF16_MAX_REL_RMS,
              "rows": rows, "whole": whole, "load": load,
              "runs": [strip(r) for rs in timed.values() for r in rs] + [strip(r) for r in single.values()]}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run()
