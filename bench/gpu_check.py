"""One-shot GPU check: real-size random weights, nothing downloaded, everything in one JSON.

    bash bench/gpu_check.sh                                   # a CUDA machine (sized for < 8 min on one H200)
    python bench/gpu_check.py --dry-run --json /tmp/g.json    # CPU, tiny release: the same code path

Phases (each in its own process, so a VRAM cap or an out-of-memory never leaks into the next):
  release  write a diffusers-layout release folder of real-size random bf16 weights (tiny with --dry-run)
  bf16     pack vs the reference loop, bf16, --steps steps: T2I and 1-reference edit at each --size
           (bench/compare.py: medians, per stage, peak VRAM), then the DiT's FLOPs per step
           (torch.utils.flop_counter) against the measured seconds per step: TFLOP/s and MFU
  8bit     the 8-bit VLM path (bitsandbytes): load, VLM weight memory, T2I and edit at the largest size
  8gb      an 8 GB card: torch.cuda.set_per_process_memory_fraction(8 GiB / total), VLM 8-bit,
           offload="all", DiT bf16, then DiT fp8 (e4m3fn) weights: T2I and edit at the largest size,
           peak VRAM or the out-of-memory error
A phase that fails is recorded (return code, last lines of its output) and the next one still runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import EDIT_PROMPT, GiB, PROMPT, Memory, Stages, measured, reference_image, settle, write_json

PHASES = ("bf16", "8bit", "8gb")
# dense bf16 tensor-core peak, FLOP/s (vendor datasheets, SXM parts); MFU is left out for other devices
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12}


# ------------------------------------------------------------------ the release folder

def write_random_release(root: Path, device: str) -> Path:
    """Real-size architectures with N(0, 0.02) bf16 weights, written in the diffusers release layout.

    Filled on `device` (seconds on a GPU), then saved: the engine loads them as it loads the release."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from bench.common import real_tokenizer_and_vlm_config
    from deepgen_model import SCBConnector, configs

    tokenizer, vlm_cfg = real_tokenizer_and_vlm_config()
    makers = {"vlm": lambda: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**vlm_cfg)),
              "connector": SCBConnector, "transformer": lambda: SD3Transformer2DModel(**configs.get("dit")),
              "vae": lambda: AutoencoderKL(**configs.get("vae"))}
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device).manual_seed(0)
    for name, make in makers.items():
        with init_empty_weights(include_buffers=False):
            module = make()
        buffers = {n: b.clone() for n, b in module.named_buffers()}  # real tables (positions, rotary)
        module.to_empty(device=device)
        with torch.no_grad():
            for n, p in module.named_parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=g, device=device).mul_(0.02))
                else:
                    p.fill_(1.0 if n.endswith("weight") else 0.0)
            for n, b in buffers.items():
                owner, _, leaf = n.rpartition(".")
                module.get_submodule(owner)._buffers[leaf] = b.to(device)
        if hasattr(module, "tie_weights"):
            module.tie_weights()
        module.to(torch.bfloat16)
        folder = root / name
        if name == "connector":
            folder.mkdir(exist_ok=True)
            save_file({k: v.contiguous().cpu() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"),
                      metadata={"format": "pt"})
            (folder / "config.json").write_text(json.dumps({"num_attention_heads": module.config.num_attention_heads}))
        else:
            module.save_pretrained(str(folder))
        del module
        settle()
    tokenizer.save_pretrained(str(root / "tokenizer"))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", **configs.get("scheduler")}))
    (root / "model_index.json").write_text(json.dumps(
        {"_class_name": ["deepgen_pipeline", "DeepGenPipeline"], "transformer": ["diffusers", "SD3Transformer2DModel"],
         "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    return root


# ------------------------------------------------------------------ phases

def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def dit_flops(pipe, size: int, refs: int) -> float:
    """FLOPs of one DiT call with batched CFG (batch 2) at size² with `refs` same-size references."""
    from torch.utils.flop_counter import FlopCounterMode

    dit = pipe.transformer
    dtype = next(p.dtype for p in dit.parameters() if p.is_floating_point() and p.itemsize > 1)
    from deepgen_model.precision import compute_dtype_of

    dtype = compute_dtype_of(dit) or dtype
    h = size // 8
    cfg = dit.dit.config
    x = torch.zeros(2, cfg.in_channels, h, h, device=dit.device, dtype=dtype)
    seq = torch.zeros(2, 198 + 256 * refs, cfg.joint_attention_dim, device=dit.device, dtype=dtype)
    pooled = torch.zeros(2, cfg.pooled_projection_dim, device=dit.device, dtype=dtype)
    references = [torch.zeros(cfg.in_channels, h, h, device=dit.device, dtype=dtype)] * refs or None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dit(x, torch.tensor([500.0, 500.0], device=dit.device), seq, pooled, references)
    return float(counter.get_total_flops())


def pack_call(pipe, mode: str, size: int, steps: int, mem: Memory) -> dict:
    """One pack call with its stages: seconds, peak memory (CUDA allocated on a GPU)."""
    from deepgen_model.compat import vlm_parts

    st = Stages(mem)
    visual, text = vlm_parts(pipe.vlm)
    st.wrap(pipe, "encode", "encode").wrap(pipe.transformer, "forward", "DiT step")
    st.wrap(pipe.vae, "encode", "reference VAE encode").wrap(pipe.vae, "decode", "decode")
    images = [reference_image(size)] if mode == "edit" else None
    row = {"mode": mode, "size": size, "steps": steps}
    try:
        settle()
        with measured(mem, row):
            pipe(EDIT_PROMPT if images else PROMPT, images=images, width=size, height=size, steps=steps,
                 max_side=size, seed=1)
    except torch.OutOfMemoryError as e:  # the 8 GB emulation's answer, recorded as the result
        row["out_of_memory"] = str(e).splitlines()[0]
    finally:
        st.restore()
    stages = st.take()
    row["stages_s"] = {k: v["seconds"] for k, v in stages.items()}
    if "DiT step" in stages:
        each = sorted(stages["DiT step"]["each"])
        row["s_per_step_median"] = each[len(each) // 2]
    row["stage_peak_gib"] = {k: v["peak_bytes"] / GiB for k, v in stages.items()}
    return row


def phase_bf16(args, release: Path) -> dict:
    from bench import compare

    part = Path(tempfile.mkdtemp()) / "compare.json"
    result = compare.run(["--model", str(release), "--device", args.device, "--size", *map(str, args.size),
                          "--steps", str(args.steps), "--repeat", str(args.repeat), "--json", str(part)])
    from deepgen_model import DeepGenPipeline

    pipe = DeepGenPipeline.from_pretrained(release, device=args.device)
    mfu = []
    peak = next((v for k, v in PEAK_BF16.items() if torch.cuda.is_available() and k in torch.cuda.get_device_name()),
                None)
    for row in result["rows"]:
        flops = dit_flops(pipe, row["size"], 1 if row["mode"] == "edit" else 0)
        step = next(s for s in result["stages"] if s["mode"] == row["mode"] and s["size"] == row["size"]
                    and s["stage"].startswith("DiT step"))
        rate = flops / step["pack_s"]
        mfu.append({"mode": row["mode"], "size": row["size"], "dit_flops_per_step": flops,
                    "s_per_step": step["pack_s"], "tflops": rate / 1e12, "mfu": rate / peak if peak else None})
    return {"compare": {k: result[k] for k in ("rows", "stages", "compute")}, "mfu": mfu, "peak_flops": peak}


def phase_8bit(args, release: Path) -> dict:
    from bench.common import param_bytes
    from deepgen_model import DeepGenPipeline

    mem = Memory(args.device)
    t = time.perf_counter()
    pipe = DeepGenPipeline.from_pretrained(release, device=args.device, quantization="8bit")
    _sync()
    out = {"load_s": time.perf_counter() - t, "vlm_weights_gib": param_bytes(pipe.vlm) / GiB, "calls": []}
    size = max(args.size)
    for mode in ("t2i", "edit"):
        out["calls"].append(pack_call(pipe, mode, size, args.steps, mem))
    return out


def phase_8gb(args, release: Path) -> dict:
    from deepgen_model import DeepGenPipeline

    cap = None
    if torch.device(args.device).type == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        cap = min(1.0, args.vram_gib * GiB / total)
        torch.cuda.set_per_process_memory_fraction(cap, 0)
    out = {"vram_cap_gib": args.vram_gib, "fraction": cap, "variants": []}
    size = max(args.size)
    for dit_weights in (None, "fp8_e4m3fn"):
        mem = Memory(args.device)
        variant = {"vlm": "8bit", "dit_weights": dit_weights or "bf16", "offload": "all"}
        try:
            pipe = DeepGenPipeline.from_pretrained(release, device=args.device, quantization="8bit", offload="all",
                                                   dit_weights=dit_weights)
        except torch.OutOfMemoryError as e:
            variant["out_of_memory"] = str(e).splitlines()[0]
            out["variants"].append(variant)
            continue
        variant["calls"] = [pack_call(pipe, mode, size, args.steps_8gb, mem) for mode in ("t2i", "edit")]
        variant["peak_gib"] = mem.overall / GiB
        if mem.cuda:
            variant["reserved_peak_gib"] = torch.cuda.max_memory_reserved() / GiB
        out["variants"].append(variant)
        del pipe
        settle()
    return out


# ------------------------------------------------------------------ driver

def run_phase(args) -> None:
    release = Path(args.release)
    payload = {"bf16": phase_bf16, "8bit": phase_8bit, "8gb": phase_8gb}[args.phase](args, release)
    Path(args.json).write_text(json.dumps(payload, indent=2, default=str))


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny release, CPU, 32/64 px, 2 steps: checks the code path")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --dry-run)")
    ap.add_argument("--size", type=int, nargs="+", default=None, help="default 512 1024 (dry run 32 64)")
    ap.add_argument("--steps", type=int, default=None, help="default 50 (dry run 2)")
    ap.add_argument("--steps-8gb", type=int, default=None, help="steps in the 8 GB phase (peak VRAM does not "
                                                                   "depend on them); default 10 (dry run 1)")
    ap.add_argument("--vram-gib", type=float, default=8.0)
    ap.add_argument("--repeat", type=int, default=None, help="pack/ref alternating rounds (default 2, dry run 1)")
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    ap.add_argument("--release", default=None, help="an existing release folder (default: write one)")
    ap.add_argument("--workdir", default=None, help="where the random release is written (default: a temp dir)")
    ap.add_argument("--phase", default=None, choices=PHASES, help=argparse.SUPPRESS)  # internal: one phase, this process
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    args = ap.parse_args(argv)
    dry = args.dry_run
    args.device = args.device or ("cpu" if dry else "cuda")
    args.size = args.size or ([32, 64] if dry else [512, 1024])
    args.steps = args.steps or (2 if dry else 50)
    args.steps_8gb = args.steps_8gb or (1 if dry else 10)
    args.repeat = args.repeat or (1 if dry else 2)
    if args.phase:
        run_phase(args)
        return {}
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the code path on a CPU)")

    result = {"dry_run": dry, "device": args.device, "sizes": args.size, "steps": args.steps, "phases": {}}
    t0 = time.perf_counter()
    if args.release:
        release = Path(args.release)
    else:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="deepgen_gpu_check_"))
        t = time.perf_counter()
        if dry:
            from bench.common import tiny_release

            release = tiny_release(work)
        else:
            release = write_random_release(work / "DeepGen-1.0-diffusers", args.device)
        result["release_write_s"] = time.perf_counter() - t
    result["release"] = str(release)
    for phase in args.phases:
        part = Path(tempfile.mkdtemp()) / f"{phase}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--release", str(release),
               "--device", args.device, "--size", *map(str, args.size), "--steps", str(args.steps),
               "--steps-8gb", str(args.steps_8gb), "--vram-gib", str(args.vram_gib), "--repeat", str(args.repeat),
               "--json", str(part)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        entry = {"seconds": time.perf_counter() - t, "returncode": proc.returncode}
        if proc.returncode == 0 and part.is_file():
            entry.update(json.loads(part.read_text()))
        else:
            entry["output_tail"] = (proc.stdout + proc.stderr)[-4000:]
        print(f"gpu_check: phase {phase}: rc {proc.returncode}, {entry['seconds']:.1f} s", flush=True)
        result["phases"][phase] = entry
    result["total_s"] = time.perf_counter() - t0
    write_json(args.json, result)
    print(f"gpu_check: wrote {args.json} ({result['total_s']:.1f} s)")
    return result


def main(argv=None) -> int:
    result = run(argv)
    return 0 if all(p.get("returncode") == 0 for p in result.get("phases", {}).values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
