"""The DiT of one pack checkout: load time, RSS growth while loading, and seconds per DiT call.

    python bench/dit.py --write-release /tmp/dg-real                       # once: real-size random DiT
    python bench/dit.py --pack . --release /tmp/dg-real --json new.json   # this checkout, as ComfyUI runs it
    python bench/dit.py --pack /old/checkout --release /tmp/dg-real --json old.json
    python bench/dit.py --engine --pack . --release /tmp/dg-real          # as the engine (deepgen_model) runs it

As ComfyUI runs it (default): ComfyUI (DEEPGEN_COMFY_DIR, CPU) and the pack at --pack imported as ComfyUI
imports a custom node, then the DiT Loader's own path (nodes.loaders.load_dit_model, weight_dtype auto) and
`BaseModel.apply_model` as a sampler calls it. --engine: deepgen_model.loading.load_dit (bf16) and
DeepGenTransformer, no ComfyUI. Either way a call is batch 2 (cond + uncond), text-to-image and a
one-reference edit at --size. Any checkout with those functions can be measured, so an old and a new
implementation compare on the same weights: run them alternately and compare medians (CPU seconds on a
shared machine). The release has real-size random bf16 weights (docs/inference.md#dit): a transformer/
folder, an empty connector/ and the scheduler config.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_release(folder: Path) -> None:
    """A diffusers-layout release holding only a real-size DiT (random bf16 weights) and its scheduler."""
    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import save_file

    from bench.common import build_real
    from deepgen_model import configs

    dit = build_real(torch.bfloat16, parts=("dit",))["dit"]
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    (folder / "connector").mkdir(exist_ok=True)
    (folder / "scheduler").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()},
              str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    (folder / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "SD3Transformer2DModel", **configs.get("dit")}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs.get("scheduler")))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DeepGenPipeline"}))


def load_pack(pack: Path):
    """ComfyUI's modules (CPU) and the pack's loaders module, imported as ComfyUI imports a custom node."""
    comfy_dir = os.environ.get("DEEPGEN_COMFY_DIR")
    if not comfy_dir:
        sys.exit("set DEEPGEN_COMFY_DIR to a ComfyUI tree (e.g. ~/.cache/comfyui-deepgen/ComfyUI)")
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = True
    # ComfyUI's own flag: on a CPU it otherwise attends with its sub-quadratic chunked attention
    args.use_pytorch_cross_attention = os.environ.get("DEEPGEN_BENCH_PYTORCH_ATTENTION") == "1"
    import folder_paths  # noqa: F401  (the pack registers its nodes only inside a ComfyUI)
    import comfy.model_management  # noqa: F401

    spec = importlib.util.spec_from_file_location("deepgen_pack", pack / "__init__.py",
                                                  submodule_search_locations=[str(pack)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["deepgen_pack"] = module
    spec.loader.exec_module(module)
    return sys.modules["deepgen_pack.nodes.loaders"], sys.modules["deepgen_pack.deepgen_model.release"]


def engine_loader(pack: Path):
    """The engine of the checkout at `pack` (no ComfyUI): load(release) -> call(x, sigma, seq, pooled, refs)."""
    sys.path.insert(0, str(pack))
    import torch

    from deepgen_model.loading import load_dit
    from deepgen_model.transformer import DeepGenTransformer

    def load(release):
        model = DeepGenTransformer(load_dit(release, dtype=torch.bfloat16))
        return lambda x, sigma, c_crossattn, y, ref_latents=None: model(
            x.bfloat16(), sigma * 1000, c_crossattn.bfloat16(), y.bfloat16(),
            None if ref_latents is None else [[r[i].bfloat16() for r in ref_latents] for i in range(x.shape[0])])
    return load


def comfy_loader(pack: Path):
    """The DiT Loader node's path of the checkout at `pack`: load(release) -> apply_model."""
    loaders, release_mod = load_pack(pack)
    return lambda release: loaders.load_dit_model(release_mod.Release.open(release), "auto").model.apply_model


def run(args) -> dict:
    import psutil
    import torch

    load = (engine_loader if args.engine else comfy_loader)(Path(args.pack).resolve())
    proc = psutil.Process()
    peak, stop = [proc.memory_info().rss], []

    def sample():
        while not stop:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    import threading

    rss0 = proc.memory_info().rss
    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    call = load(args.release)
    load_s = time.perf_counter() - t0
    stop.append(True)
    attention = sys.modules.get("comfy.ldm.modules.attention")
    out = {"pack": str(args.pack), "side": "engine" if args.engine else "comfy", "load_s": round(load_s, 2),
           "load_peak_gib": round((peak[0] - rss0) / 2**30, 2), "threads": torch.get_num_threads(),
           "load_avg": round(os.getloadavg()[0], 2),
           "comfy_attention": attention.optimized_attention.__name__ if attention else None}
    h = w = args.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, h, w, generator=g)
    cfg = json.loads((Path(args.release) / "transformer" / "config.json").read_text())
    conds = {"c_crossattn": torch.randn(2, 160, cfg["joint_attention_dim"], generator=g),
             "y": torch.randn(2, cfg["pooled_projection_dim"], generator=g)}
    for name, extra in (("t2i", {}), ("edit", {"ref_latents": [torch.randn(2, 16, h, w, generator=g)]})):
        wall, cpu = [], []
        with torch.no_grad():
            for i in range(args.calls + 1):
                t, c = time.perf_counter(), time.process_time()
                call(x, torch.tensor([0.7, 0.7]), **conds, **extra)
                if i:  # the first call warms up
                    wall.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
        for unit, values in (("s", wall), ("cpu_s", cpu)):  # CPU seconds: what the call costs on a shared machine
            out[f"{name}_call_{unit}"] = {"median": round(statistics.median(values), 3),
                                          "min": round(min(values), 3), "max": round(max(values), 3)}
    return out


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-release", type=Path, help="write the real-size random DiT release here and exit")
    p.add_argument("--pack", default=str(ROOT), help="the pack checkout to measure (default: this one)")
    p.add_argument("--engine", action="store_true", help="the engine's DiT (deepgen_model), not ComfyUI's")
    p.add_argument("--release", help="the release folder --write-release wrote")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--calls", type=int, default=3, help="timed DiT calls per case (after one warm-up call)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.write_release:
        return write_release(args.write_release)
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
