"""Per-stage time and peak memory (ViT, VLM, SCB, DiT step, VAE), the cached re-run saving, the
VLM early stop, the tied LM head, and which weights sit on the accelerator under each offload mode.

    python bench/stages.py --model tiny                                 # CI smoke
    python bench/stages.py --model real --size 512 --json stages_real.json   # CPU: 1 step, random weights

One run each of: T2I, then a cached re-run (new seed, cfg, same conditioning), then a 1-reference
edit and its cached re-run. "DiT step" is one DiT call (batched CFG: batch 2). Peak memory is the
process RSS on CPU (all weights resident) or CUDA allocated memory on a GPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import (EDIT_PROMPT, PROMPT, GiB, Memory, Stages, param_bytes, real_pipeline, reference_image,
                          settle, table, tiny_release, write_json)

ENCODER = ("ViT", "VLM text", "SCB")
SAMPLER = ("DiT step", "VAE decode")


def _load(model: str, device: str, release: str | None, quant: str | None = None, offload: str = "none",
          dit_weights: str | None = None):
    from deepgen_model import DeepGenPipeline

    if model == "tiny":
        return DeepGenPipeline.from_pretrained(tiny_release(release), dtype="fp32", device=device)
    if model == "real":
        return real_pipeline()[0]
    return DeepGenPipeline.from_pretrained(model, device=device, quantization=quant, offload=offload,
                                           dit_weights=dit_weights)


def _instrument(pipe, mem: Memory) -> Stages:
    from deepgen_model.compat import vlm_parts

    visual, text = vlm_parts(pipe.vlm)
    st = Stages(mem)
    st.wrap(visual, "forward", "ViT").wrap(text, "forward", "VLM text").wrap(pipe.scb, "forward", "SCB")
    st.wrap(pipe.transformer, "forward", "DiT step").wrap(pipe.vae, "encode", "VAE encode")
    st.wrap(pipe.vae, "decode", "VAE decode")
    head = getattr(pipe.vlm, "lm_head", None)
    if head is not None:
        st.wrap(head, "forward", "lm_head")
    return st


def _run(st: Stages, mem: Memory, label: str, fn) -> dict:
    settle()
    t = time.perf_counter()
    out = fn()
    total = time.perf_counter() - t
    return {"run": label, "total_s": total, "stages": st.take(), "output": out}


def _vlm_depth(pipe, size_note: str) -> dict:
    """What the early stop saves: one FULL text forward (all layers + final norm) on the engine's own
    inputs, each decoder layer and the norm timed inside that single forward (robust on a shared box,
    where two separate forwards differ by more than one layer's cost)."""
    from deepgen_model.compat import vlm_parts

    text = vlm_parts(pipe.vlm)[1]
    captured = {}
    handle = text.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    try:
        pipe.encode(PROMPT, "")
    finally:
        handle.remove()
    parts = list(text.layers) + [text.norm]
    times, handles = [0.0] * len(parts), []
    for i, m in enumerate(parts):
        handles.append(m.register_forward_pre_hook(lambda m, a, i=i: times.__setitem__(i, -time.perf_counter())))
        handles.append(m.register_forward_hook(lambda m, a, o, i=i: times.__setitem__(i, times[i] + time.perf_counter())))
    try:
        t = time.perf_counter()
        with torch.no_grad():
            text(**captured)
        total = time.perf_counter() - t
    finally:
        for h in handles:
            h.remove()
    layers = len(text.layers)
    skipped = times[-2] + times[-1]  # the last decoder layer and the final norm
    return {"what": f"VLM text forward, T2I pos+neg ({size_note})", "layers": layers,
            "tokens": list(captured["inputs_embeds"].shape[:2]), "full_forward_s": total,
            "per_layer_s": times[:-1], "final_norm_s": times[-1], "skipped_s": skipped,
            "saving_fraction": skipped / total, "early_stop_s": total - skipped}


def _lm_head(pipe) -> dict:
    from deepgen_model.compat import vlm_parts

    embed = vlm_parts(pipe.vlm)[1].get_input_embeddings()
    head = getattr(pipe.vlm, "lm_head", None)
    tied = head is not None and head.weight.untyped_storage().data_ptr() == embed.weight.untyped_storage().data_ptr()
    return {"tie_word_embeddings": bool(getattr(pipe.vlm.config, "tie_word_embeddings", False)
                                        or getattr(getattr(pipe.vlm.config, "text_config", None), "tie_word_embeddings", False)),
            "lm_head_shares_embedding_storage": tied, "embedding_params": embed.weight.numel(),
            "embedding_gib": embed.weight.numel() * embed.weight.element_size() / GiB,
            "extra_bytes_for_lm_head": 0 if tied else (head.weight.untyped_storage().nbytes() if head is not None else 0)}


def _residency(pipe) -> list[dict]:
    """Weights that must sit on the accelerator in each phase, per offload mode (exact tensor sizes)."""
    size = {n: param_bytes(m) for n, m in (("vlm", pipe.vlm), ("scb", pipe.scb), ("dit", pipe.transformer),
                                           ("vae", pipe.vae))}
    phases = {"encode (VLM+SCB)": ("vlm", "scb"), "reference VAE encode": ("vae",), "sampling (DiT)": ("dit",),
              "VAE decode": ("vae",)}
    ours = {"vlm": "vlm", "scb": "scb", "transformer": "dit", "vae": "vae"}  # the pipeline's names -> this table's
    stay = {mode: set(size) - {ours[n] for n in pipe.offloaded(mode)} for mode in pipe.OFFLOAD}
    rows = []
    for mode, resident in stay.items():
        row = {"offload": mode}
        for phase, need in phases.items():
            row[phase] = sum(size[n] for n in set(need) | resident) / GiB
        row["peak weights GiB"] = max(v for k, v in row.items() if k != "offload")
        rows.append(row)
    return rows, {k: v / GiB for k, v in size.items()}


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | real | path of a diffusers release folder")
    ap.add_argument("--release", default=None, help="tiny only: an existing fixture release folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=None, help="square size (default 32 tiny, 512 otherwise)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quant", default=None, choices=[None, "8bit", "nf4"], help="VLM quantization (release only)")
    ap.add_argument("--offload", default="none", choices=["none", "encoder", "all"], help="release only")
    ap.add_argument("--dit-weights", default=None, choices=[None, "fp8_e4m3fn"], help="release only")
    ap.add_argument("--vram-limit-gib", type=float, default=None,
                    help="CUDA: cap this process at N GiB (torch.cuda.set_per_process_memory_fraction), e.g. 8")
    ap.add_argument("--skip-depth", action="store_true", help="skip the full-VLM-forward comparison")
    ap.add_argument("--depth-only", action="store_true", help="only the VLM early-stop measurement")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (32 if args.model == "tiny" else 512)
    if args.vram_limit_gib and torch.device(args.device).type == "cuda":
        total = torch.cuda.get_device_properties(torch.device(args.device)).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.vram_limit_gib * GiB / total), torch.device(args.device))
    mem = Memory(args.device)
    t = time.perf_counter()
    pipe = _load(args.model, args.device, args.release, args.quant, args.offload, args.dit_weights)
    load_s, baseline = time.perf_counter() - t, mem.now() / GiB
    if args.depth_only:
        depth = _vlm_depth(pipe, args.model)
        print(f"VLM: full forward {depth['full_forward_s']:.3f} s over {depth['tokens']} tokens; layer {depth['layers']} "
              f"+ final norm {depth['skipped_s']:.3f} s = {depth['saving_fraction']:.1%} saved by stopping after layer "
              f"{depth['layers'] - 1}; median layer {sorted(depth['per_layer_s'])[depth['layers'] // 2]:.3f} s")
        write_json(args.json, {"model": args.model, "vlm_depth": depth})
        return {"vlm_depth": depth}
    st = _instrument(pipe, mem)
    runs = []
    try:
        common = dict(width=size, height=size, steps=args.steps)
        runs.append(_run(st, mem, "T2I", lambda: pipe(PROMPT, "", seed=0, **common)))
        cond = runs[-1]["output"].conditioning
        runs.append(_run(st, mem, "T2I cached re-run (seed, cfg)",
                         lambda: pipe(conditioning=cond, seed=1, cfg_scale=5.0, **common)))
        ref = [reference_image(size)]
        runs.append(_run(st, mem, "edit, 1 reference", lambda: pipe(EDIT_PROMPT, images=ref, seed=0, max_side=size,
                                                                      **common)))
        econd = runs[-1]["output"].conditioning
        runs.append(_run(st, mem, "edit cached re-run (seed, cfg)",
                         lambda: pipe(conditioning=econd, seed=1, cfg_scale=5.0, **common)))
    finally:
        st.restore()

    stage_rows, cached_rows = [], []
    for r in runs:
        for name in ("ViT", "VLM text", "SCB", "VAE encode", "DiT step", "VAE decode", "lm_head"):
            rec = r["stages"].get(name)
            if rec:
                stage_rows.append({"run": r["run"], "stage": name, "calls": rec["calls"],
                                   "seconds_per_call": rec["seconds"] / rec["calls"], "seconds": rec["seconds"],
                                   "peak_gib": rec["peak_bytes"] / GiB})
        stage_rows.append({"run": r["run"], "stage": "TOTAL", "seconds": r["total_s"]})
    for full, cached in ((runs[0], runs[1]), (runs[2], runs[3])):
        enc = sum(full["stages"].get(k, {}).get("seconds", 0.0) for k in ENCODER)
        sampler = sum(cached["stages"].get(k, {}).get("seconds", 0.0) for k in SAMPLER)
        rest = cached["total_s"] - sampler  # everything the re-run did besides DiT steps and decoding
        cached_rows.append({"run": full["run"], "full_s": full["total_s"], "cached_s": cached["total_s"],
                            "encoder_s_full": enc, "non_sampler_s_cached": rest,
                            "encoder_calls_cached": sum(cached["stages"].get(k, {}).get("calls", 0) for k in ENCODER),
                            "skipped_fraction": 1 - rest / enc if enc else None})

    depth = None if args.skip_depth else _vlm_depth(pipe, args.model)
    head = _lm_head(pipe)
    residency, sizes = _residency(pipe)

    print(f"load {load_s:.1f} s, resident after load {baseline:.2f} GiB ({'CUDA allocated' if mem.cuda else 'RSS'}); "
          f"{size}x{size}, {args.steps} step(s), threads {torch.get_num_threads()}")
    print(table(stage_rows, [("run", "run", ""), ("stage", "stage", ""), ("calls", "calls", ""),
                             ("seconds_per_call", "s/call", "{:.3f}"), ("seconds", "s total", "{:.3f}"),
                             ("peak_gib", "peak GiB", "{:.2f}")], "per stage"))
    print(table(cached_rows, [("run", "run", ""), ("full_s", "full s", "{:.3f}"), ("cached_s", "re-run s", "{:.3f}"),
                              ("encoder_s_full", "ViT+VLM+SCB s", "{:.3f}"),
                              ("non_sampler_s_cached", "re-run non-sampler s", "{:.3f}"),
                              ("encoder_calls_cached", "encoder calls", ""),
                              ("skipped_fraction", "skipped", "{:.2%}")], "cached re-run"))
    if depth:
        print(f"VLM early stop after layer {depth['layers'] - 1} of {depth['layers']} ({depth['tokens']} tokens): full forward "
              f"{depth['full_forward_s']:.3f} s, of which layer {depth['layers']} + final norm {depth['skipped_s']:.3f} s "
              f"= the saving ({depth['saving_fraction']:.1%}); median layer {sorted(depth['per_layer_s'])[depth['layers'] // 2]:.3f} s")
    print(f"lm_head tied to the input embedding: {head['lm_head_shares_embedding_storage']} "
          f"(embedding {head['embedding_gib']:.2f} GiB; extra bytes for lm_head {head['extra_bytes_for_lm_head']})")
    print(table(residency, [("offload", "offload", "")] + [(k, k, "{:.2f}") for k in residency[0] if k != "offload"],
                "weights on the accelerator per phase, GiB (exact tensor sizes; activations not included)"))
    if mem.cuda:
        print(f"CUDA peak allocated over all stages: {mem.overall / GiB:.2f} GiB "
              f"(reserved peak {torch.cuda.max_memory_reserved() / GiB:.2f} GiB)")
    result = {"model": args.model, "device": args.device, "size": size, "quant": args.quant, "offload": args.offload,
              "dit_weights": args.dit_weights, "steps": args.steps, "load_s": load_s,
              "resident_after_load_gib": baseline, "peak_gib_all_stages": mem.overall / GiB, "stages": stage_rows, "cached": cached_rows, "vlm_depth": depth,
              "lm_head": head, "weights_gib": sizes, "residency_gib": residency}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run()
