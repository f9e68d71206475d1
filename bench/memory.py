"""Weight memory per component: bf16 vs fp32 storage (and fp8 Linear weights for the DiT).

    python bench/memory.py --model tiny                         # CI smoke
    python bench/memory.py --model real --json memory_real.json # CPU: builds each component alone

For each component and storage dtype the component is built alone (real: real-size architecture with
random weights; tiny: the fixture's modules cast), and the table shows the exact tensor bytes and,
for real size, the measured RSS growth of the process. A real-size build that needs more RAM than is
available (fp32 VLM: ~14 GiB) is skipped and says so; its bytes are still exact (meta tensors).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import torch

from bench.common import GiB, Memory, materialise, param_bytes, settle, table, write_json

COMPONENTS = ("vlm", "scb", "dit", "vae")
VARIANTS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}


def _meta(name: str):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from bench.common import real_tokenizer_and_vlm_config
    from deepgen_model import SCBConnector, configs

    if name == "vlm":
        with init_empty_weights(include_buffers=False):
            m = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**real_tokenizer_and_vlm_config()[1]))
        # tied in the release (tie_word_embeddings); outside init_empty_weights, which would re-create the tensor
        m.lm_head.weight = m.get_input_embeddings().weight
        return m
    with init_empty_weights(include_buffers=False):
        return {"scb": SCBConnector, "dit": lambda: SD3Transformer2DModel(**configs.get("dit")),
                "vae": lambda: AutoencoderKL(**configs.get("vae"))}[name]()


def _tiny(name: str):
    from deepgen_model import tiny as deepgen_tiny
    from deepgen_model import SCBConfig, SCBConnector

    comps = deepgen_tiny.build_tiny_components(0)
    if name == "scb":
        b = SCBConnector(SCBConfig.from_state_dict(comps.scb_state, comps.scb_heads))
        b.load_state_dict(comps.scb_state)
        return b
    return {"vlm": comps.vlm_base, "dit": comps.dit, "vae": comps.vae}[name]


def _bytes_as(module, dtype, cast_buffers: bool) -> int:
    """Exact bytes if the module's floating weights were stored in `dtype` (fp8: Linear weights only, rest bf16).
    Buffers (the DiT's position table) are cast too only when `cast_buffers` (tiny: module.to(dtype))."""
    seen, total = set(), 0
    linear = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Linear)}
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        if not t.is_floating_point() or (not cast_buffers and not isinstance(t, torch.nn.Parameter)):
            total += t.numel() * t.element_size()
        elif dtype.itemsize == 1:
            total += t.numel() * (1 if id(t) in linear else 2)
        else:
            total += t.numel() * dtype.itemsize
    return total


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "real"])
    ap.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    mem = Memory()
    rows = []
    for name in args.components:
        variants = ["fp32", "bf16"] + (["fp8_e4m3fn"] if name == "dit" else [])
        shape = _meta(name) if args.model == "real" else _tiny(name)
        params = sum(p.numel() for p in shape.parameters())
        for variant in variants:
            dtype = VARIANTS[variant]
            row = {"component": name, "storage": variant, "params_m": params / 1e6,
                   "bytes_gib": _bytes_as(shape, dtype, args.model == "tiny") / GiB}
            if args.model == "real":
                need = row["bytes_gib"] * 1.15 * GiB
                if psutil.virtual_memory().available < need + 2 * GiB:
                    row["note"] = "RSS not measured: not enough free RAM on this machine"
                    rows.append(row)
                    continue
                settle()
                before = mem.now()
                key = object()
                mem.open(key)
                t = time.perf_counter()
                module = materialise(_meta(name), torch.bfloat16 if dtype.itemsize == 1 else dtype)
                if dtype.itemsize == 1:
                    from deepgen_model.precision import store_linear_weights

                    store_linear_weights(module, dtype)
                settle()
                row["build_s"] = time.perf_counter() - t
                row["rss_growth_gib"] = (mem.now() - before) / GiB
                row["build_peak_growth_gib"] = (mem.close(key) - before) / GiB
                row["measured_tensor_gib"] = param_bytes(module) / GiB
                del module
                settle()
            else:
                module = copy.deepcopy(shape).to(torch.bfloat16 if dtype.itemsize == 1 else dtype)
                if dtype.itemsize == 1:
                    from deepgen_model.precision import store_linear_weights

                    store_linear_weights(module, dtype)
                row["measured_tensor_gib"] = param_bytes(module) / GiB
            rows.append(row)
    cols = [("component", "component", ""), ("storage", "storage", ""), ("params_m", "params M", "{:.1f}"),
            ("bytes_gib", "weights GiB", "{:.4f}"), ("measured_tensor_gib", "built tensors GiB", "{:.4f}"),
            ("rss_growth_gib", "RSS growth GiB", "{:.2f}"), ("build_peak_growth_gib", "build peak GiB", "{:.2f}"),
            ("note", "note", "")]
    print(table(rows, cols, f"weight storage ({args.model}; compute is fp32 on CPUs without native bf16)"))
    result = {"model": args.model, "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    run()
