"""Pack vs the reference loop on the SAME weights, in the same run: seconds per image, per stage, and peak memory.

    python bench/compare.py --model tiny                                   # CI smoke (fixture release)
    python bench/compare.py --model real --size 256 --steps 2 --json compare_real.json   # CPU, random weights
    python bench/compare.py --model PATH/DeepGen-1.0-diffusers --device cuda --size 512 1024 --steps 50

The reference loop (bench/reference_loop.py) is an independent plain implementation of the official
generate(): VLM + SCB on every call, batched CFG, diffusers' Euler scheduler, everything resident.
tiny: each side loads the fixture release folder itself (fp32). real: real-size architectures with
random bf16 weights, which both sides share, computing in --compute (auto: what the engine picks for
this CPU). A release PATH: the pack loads it (dtype auto, --quant for the VLM) and the reference runs
over the pack's modules.

Each configuration runs the two sides alternately, --repeat rounds, the order flipping every round
(ref, pack / pack, ref / ...), so a drift in the machine's speed hits both. Reported: the median,
min and max of each side, the median of the per-round pack/ref ratios, the machine load during
every run (load average, cores busy with other processes, stolen cores), and the same breakdown
per stage for both sides (encode = ViT + VLM + SCB, reference VAE encode, each sampling step,
decode, other = the rest), so a gap points at its stage. The largest latent difference between
the two sides rides along as a fidelity check.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (EDIT_PROMPT, PROMPT, Memory, Stages, machine_load, measured, real_pipeline,
                          reference_for, reference_image, settle, table, tiny_release, write_json)

STAGES = ("encode", "ViT", "VLM text", "SCB", "reference VAE encode", "DiT step", "decode")
PER_STEP_ROWS = 4  # up to this many steps, each step gets its own row; beyond, the per-step median


def load(model: str, device: str, quant: str | None, release: str | None = None, compute: str = "auto"):
    from deepgen_model import DeepGenPipeline
    from deepgen_model.precision import compute_dtype_of, parse_dtype

    if model == "tiny":
        from bench.reference_loop import ReferenceDeepGen

        release = tiny_release(release)
        return DeepGenPipeline.from_pretrained(release, dtype="fp32", device=device), ReferenceDeepGen(release, device)
    if model == "real":
        pipe, _ = real_pipeline(parse_dtype(compute))
        return pipe, reference_for(pipe, compute_dtype_of(pipe.transformer))
    pipe = DeepGenPipeline.from_pretrained(model, device=device, quantization=quant)
    return pipe, reference_for(pipe, compute_dtype_of(pipe.transformer.dit) or pipe.transformer.dit.dtype)


def instrument(pipe, ref, mem: Memory) -> Stages:
    """The same stage names on both sides; the VLM, DiT and VAE modules are shared, the glue is not."""
    from deepgen_model.compat import vlm_parts

    st = Stages(mem)
    st.wrap(pipe, "encode", "encode")
    for method in ("_vit", "_stacked", "_scb"):  # the reference's encode: ViT, VLM rows (+ pad rows), SCB
        st.wrap(ref, method, "encode")
    st.wrap(pipe.scb, "forward", "SCB").wrap(ref, "_scb", "SCB")
    st.wrap(pipe.transformer, "forward", "DiT step").wrap(ref, "_velocity", "DiT step")
    vlms, vaes = [pipe.vlm] + [ref.vlm] * (ref.vlm is not pipe.vlm), [pipe.vae] + [ref.vae] * (ref.vae is not pipe.vae)
    for vlm in vlms:  # tiny: each side loaded its own copy; otherwise the modules are shared (wrap once)
        visual, text = vlm_parts(vlm)
        st.wrap(visual, "forward", "ViT").wrap(text, "forward", "VLM text")
    for vae in vaes:
        st.wrap(vae, "encode", "reference VAE encode").wrap(vae, "decode", "decode")
    return st


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(mode: str, size: int, steps: int, runs: dict) -> tuple[dict, list[dict]]:
    """runs[side] = list of per-run records -> one summary row and the per-stage rows."""
    ref, pack = runs["reference"], runs["pack"]
    ratios = [p["seconds"] / r["seconds"] for r, p in zip(ref, pack)]
    row = {"mode": mode, "size": size, "steps": steps, "repeats": len(ref),
           "reference_s": _spread([r["seconds"] for r in ref]), "pack_s": _spread([r["seconds"] for r in pack]),
           "ratio": _spread(ratios), "ratios": ratios,
           "cpu_ratio": _spread([p["cpu_s"] / r["cpu_s"] for r, p in zip(ref, pack)]),
           "reference_peak_gib": max(r["peak_gib"] for r in ref), "pack_peak_gib": max(r["peak_gib"] for r in pack),
           "load_avg_1m": _spread([r["load_avg_1m"] for r in ref + pack]),
           "other_cpu_cores": _spread([r["other_cpu_cores"] for r in ref + pack]),
           "steal_cores": _spread([r["steal_cores"] for r in ref + pack])}

    def stage_values(rec_list, name, step=None):
        out = []
        for rec in rec_list:
            s = rec["stages"].get(name)
            if s is None:
                return None
            out.append(s["each"][step] if step is not None else s["seconds"])
        return out

    def other(rec):
        top = ("encode", "reference VAE encode", "DiT step", "decode")
        return rec["seconds"] - sum(rec["stages"].get(k, {}).get("seconds", 0.0) for k in top)

    names = [(n, None, n) for n in STAGES if n != "DiT step"]
    if steps <= PER_STEP_ROWS:
        names[5:5] = [("DiT step", i, f"DiT step {i + 1}") for i in range(steps)]
    stage_rows = []
    for name, step, label in names + [("other", None, "other")]:
        if name == "other":
            r_vals, p_vals = [other(r) for r in ref], [other(p) for p in pack]
        else:
            r_vals, p_vals = stage_values(ref, name, step), stage_values(pack, name, step)
        if not r_vals and not p_vals:
            continue
        r_med = statistics.median(r_vals) if r_vals else None
        p_med = statistics.median(p_vals) if p_vals else None
        stage_rows.append({"mode": mode, "size": size, "stage": label, "reference_s": r_med, "pack_s": p_med,
                           "reference_range": [min(r_vals), max(r_vals)] if r_vals else None,
                           "pack_range": [min(p_vals), max(p_vals)] if p_vals else None,
                           "ratio": p_med / r_med if r_med and p_med is not None else None})
    if steps > PER_STEP_ROWS:
        per_step = lambda recs: statistics.median([e for rec in recs for e in rec["stages"]["DiT step"]["each"]])  # noqa: E731
        r_med, p_med = per_step(ref), per_step(pack)
        stage_rows.insert(5, {"mode": mode, "size": size, "stage": f"DiT step (median of {steps})",
                              "reference_s": r_med, "pack_s": p_med, "ratio": p_med / r_med})
    return row, stage_rows


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | real | path of a diffusers release folder")
    ap.add_argument("--release", default=None, help="tiny only: an existing fixture release folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, nargs="+", default=None, help="square sizes (default 32 tiny, 256 otherwise)")
    ap.add_argument("--steps", type=int, default=None, help="default 3 tiny, 2 real, 50 release")
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--modes", nargs="+", default=["t2i", "edit"], choices=["t2i", "edit"])
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds (one run of each side per round)")
    ap.add_argument("--compute", default="auto", choices=["auto", "fp32", "bf16"],
                    help="real only: compute dtype over the bf16 weights (auto: the engine's choice for this CPU)")
    ap.add_argument("--quant", default=None, choices=[None, "8bit", "nf4"], help="VLM quantization (release only)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = args.model == "tiny"
    sizes = args.size or ([32] if tiny else [256] if args.model == "real" else [512])
    steps = args.steps or (3 if tiny else 2 if args.model == "real" else 50)
    from deepgen_model.constants import EDIT_NEGATIVE
    from deepgen_model.precision import compute_dtype_of

    mem = Memory(args.device)
    pipe, ref = load(args.model, args.device, args.quant, args.release, args.compute)
    # per stage: under the CPU policy the VLM computes in fp32 while the other stages compute in bf16
    compute = {stage: str(compute_dtype_of(module) or "").removeprefix("torch.")
               for stage, module in (("vlm", pipe.vlm), ("scb", pipe.scb), ("dit", pipe.transformer),
                                     ("vae", pipe.vae))}
    st = instrument(pipe, ref, mem)
    rows, stage_rows, raw = [], [], []
    try:
        for mode in args.modes:
            for size in sizes:
                images = [reference_image(size)] if mode == "edit" else None
                prompt, negative = (EDIT_PROMPT, EDIT_NEGATIVE) if images else (PROMPT, "")
                common = dict(images=images, width=size, height=size, steps=steps, seed=1, max_side=size)
                sides = {"reference": lambda: ref.generate(prompt, negative, cfg=args.cfg, **common)[0],
                         "pack": lambda: pipe(prompt, negative, cfg_scale=args.cfg, **common).latents}
                runs, outs = {"reference": [], "pack": []}, {}
                if tiny:  # one untimed round first: lazy initialisation dominates a tiny model
                    for fn in sides.values():
                        fn()
                for round_ in range(args.repeat):
                    for side in ("reference", "pack") if round_ % 2 == 0 else ("pack", "reference"):
                        settle()
                        rec = {"round": round_}
                        st.take()
                        with machine_load(rec), measured(mem, rec):
                            outs[side] = sides[side]()
                        rec["stages"] = st.take()
                        runs[side].append(rec)
                        print(f"  {mode} {size}px round {round_} {side}: {rec['seconds']:.2f} s (load "
                              f"{rec['load_avg_1m']}, others {rec['other_cpu_cores']} cores)", flush=True)
                row, srows = summarise(mode, size, steps, runs)
                row["max_abs_latent_diff"] = (outs["pack"].float().cpu() - outs["reference"].float().cpu()).abs().max().item()
                rows.append(row)
                stage_rows += srows
                raw.append({"mode": mode, "size": size, "runs": runs})
    finally:
        st.restore()

    fmt = lambda d: f"{d['median']:.3f} [{d['min']:.3f}-{d['max']:.3f}]"  # noqa: E731
    printable = [{**r, "ref": fmt(r["reference_s"]), "pack": fmt(r["pack_s"]), "pr": fmt(r["ratio"]),
                  "load": f"{r['load_avg_1m']['min']:.1f}-{r['load_avg_1m']['max']:.1f}",
                  "others": f"{r['other_cpu_cores']['median']:.2f}", "cpr": f"{r['cpu_ratio']['median']:.3f}"}
                 for r in rows]
    memory_kind = "CUDA allocated" if mem.cuda else "process RSS"
    print(table(printable, [("mode", "mode", ""), ("size", "px", ""), ("steps", "steps", ""),
                            ("ref", "reference s median [min-max]", ""), ("pack", "pack s median [min-max]", ""),
                            ("pr", "pack/ref median [min-max]", ""), ("cpr", "CPU-s pack/ref", ""),
                            ("load", "load avg", ""),
                            ("others", "other procs cores", ""),
                            ("reference_peak_gib", "ref peak GiB", "{:.2f}"), ("pack_peak_gib", "pack peak GiB", "{:.2f}"),
                            ("max_abs_latent_diff", "max |dlatent|", "{:.1e}")],
                f"pack vs reference loop ({args.model}, {args.device}, compute "
                f"{' '.join(f'{k} {v}' for k, v in compute.items())}, {memory_kind}, "
                f"{args.repeat} alternating rounds, threads {torch.get_num_threads()})"))
    print(table(stage_rows, [("mode", "mode", ""), ("size", "px", ""), ("stage", "stage", ""),
                             ("reference_s", "reference s (median)", "{:.3f}"), ("pack_s", "pack s (median)", "{:.3f}"),
                             ("ratio", "pack/ref", "{:.2f}")], "per stage, both sides"))
    result = {"model": args.model, "device": args.device, "compute": compute, "repeat": args.repeat,
              "memory": memory_kind, "rows": rows, "stages": stage_rows, "runs": raw}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run()
