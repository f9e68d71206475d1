"""Peak RAM of loading the VLM from each release layout, on a reduced real-structure Qwen2.5-VL.

    python bench/vlm_load.py --write /tmp/vlm-layouts [--layers 4]      # once: the releases, random bf16 weights
    python bench/vlm_load.py --measure /tmp/vlm-layouts [--rounds 2] [--json out.json]

The VLM has Qwen2.5-VL-3B's real widths (vocab 151,936 x 2048 embedding, 11,008 MLP, the full 32-block ViT) and
`--layers` of its 36 decoder layers, so a load costs what the real one costs per tensor while the files stay a
few GB. Written as the releases hold it: the diffusers release's vlm/ folder (LoRA merged, 2 shards), the native
model.pt (the VLM LoRA, rank 64 as released, incl. the embedding's) with the stock Qwen folder as vlm_base, and
deepgen_vlm.safetensors (deepgen_model.convert). Each load runs in a fresh process, the layouts alternating;
each weight is then read once (as the first encode does). Figures: the process's peak RSS (sampled every 10 ms)
minus its RSS once the libraries are imported, and the private part of it (RSS less file-backed pages: what
cannot be dropped under memory pressure).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

LAYOUTS = {"diffusers": ("DeepGen-1.0-diffusers", None), "native+LoRA": ("DeepGen-1.0/model.pt", "Qwen2.5-VL-3B-Instruct"),
           "converted": ("converted/deepgen_vlm.safetensors", None)}
LORA_RANK = 64


def write(root: Path, layers: int) -> None:
    import torch
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from bench.common import materialise, real_tokenizer_and_vlm_config
    from deepgen_model import tiny
    from deepgen_model.convert import convert
    from deepgen_model.lora import merge_lora_into_state

    tokenizer, cfg = real_tokenizer_and_vlm_config()
    cfg["num_hidden_layers"] = layers
    with init_empty_weights(include_buffers=False):
        vlm = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg))
    vlm = materialise(vlm, torch.bfloat16)
    base = {tiny.legacy_vlm_key(k): v.contiguous() for k, v in vlm.state_dict().items() if k != "lm_head.weight"}
    del vlm
    g = torch.Generator().manual_seed(0)
    lora = {}
    for name, w in base.items():  # every linear of the decoder layers and the ViT, and the embedding, as released
        module = name.removesuffix(".weight")  # the LoRA in transformers 4.51 names (lmm.model.layers..., lmm.visual...)
        if name == "model.embed_tokens.weight":
            lora[f"lmm.{module}.lora_embedding_A.default"] = torch.randn(LORA_RANK, w.shape[0], generator=g).bfloat16()
            lora[f"lmm.{module}.lora_embedding_B.default"] = torch.randn(w.shape[1], LORA_RANK, generator=g).bfloat16() * 1e-3
        elif w.ndim == 2 and any(t in name for t in (*tiny.LM_LORA_TARGETS, *tiny.VIT_LORA_TARGETS, "merger.mlp")):
            lora[f"lmm.{module}.lora_A.default.weight"] = torch.randn(LORA_RANK, w.shape[1], generator=g).bfloat16() * 1e-2
            lora[f"lmm.{module}.lora_B.default.weight"] = torch.randn(w.shape[0], LORA_RANK, generator=g).bfloat16() * 1e-3
    qwen = root / LAYOUTS["native+LoRA"][1]
    tiny._write_vlm_folder(qwen, base, with_tokenizer=True)
    tiny._json(qwen / "config.json", cfg)
    native = root / LAYOUTS["native+LoRA"][0]
    native.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"transformer.pos_embed.proj.bias": torch.zeros(1536), **lora}, str(native))
    release = root / LAYOUTS["diffusers"][0]
    merged = merge_lora_into_state(dict(base), lora, source="bench LoRA")
    tiny._write_vlm_folder(release / "vlm", merged, with_tokenizer=False)
    tiny._json(release / "vlm" / "config.json", cfg)
    tiny.write_tokenizer(release / "tokenizer")
    tiny._json(release / "model_index.json", tiny.MODEL_INDEX)
    (release / "connector").mkdir(exist_ok=True)
    del merged, base
    convert(release, root / "converted", components=("vlm",))


_CHILD = """
import json, sys, threading, time, psutil, torch
sys.path.insert(0, sys.argv[1])
from deepgen_model.release import Release
from deepgen_model.vlm_loading import load_vlm
proc, peak, done = psutil.Process(), {"rss": 0, "anon": 0}, threading.Event()
def sample():
    while not done.is_set():
        m = proc.memory_info()
        peak["rss"], peak["anon"] = max(peak["rss"], m.rss), max(peak["anon"], m.rss - m.shared)
        time.sleep(0.01)
m0 = proc.memory_info()
threading.Thread(target=sample, daemon=True).start()
vlm, _ = load_vlm(Release.open(sys.argv[2], vlm_base=sys.argv[3] or None))
with torch.no_grad():  # every weight read once, as the first encode does: mapped file pages count from here
    sum(float(p.max()) for p in vlm.parameters() if p.numel())
time.sleep(0.05)
done.set()
m = proc.memory_info()
print(json.dumps({"peak": peak["rss"] - m0.rss, "peak_anon": peak["anon"] - (m0.rss - m0.shared),
                  "held": m.rss - m0.rss, "held_anon": (m.rss - m.shared) - (m0.rss - m0.shared)}))
"""


def measure(root: Path, rounds: int, pack: Path) -> dict:
    runs = {name: [] for name in LAYOUTS}
    for _ in range(rounds):
        for name, (path, base) in LAYOUTS.items():
            out = subprocess.run([sys.executable, "-c", _CHILD, str(pack), str(root / path),
                                  str(root / base) if base else ""], check=True, capture_output=True, text=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    gib = 2 ** 30
    print("\n| layout | peak RSS growth, GiB (median; runs) | of which private (not file pages) | held after "
          "loading, GiB (private) |\n|---|---|---|---|")
    for name, r in runs.items():
        med = {k: statistics.median(x[k] / gib for x in r) for k in r[0]}
        each = ", ".join(f"{x['peak'] / gib:.2f}" for x in r)
        print(f"| {name} | {med['peak']:.2f} ({each}) "
              f"| {med['peak_anon']:.2f} | {med['held']:.2f} ({med['held_anon']:.2f}) |")
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", type=Path, help="write the releases into this folder")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the reduced VLM (the real one has 36)")
    ap.add_argument("--measure", type=Path, help="measure loading the releases in this folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pack", type=Path, default=ROOT, help="the checkout whose deepgen_model loads (before/after)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.write:
        write(args.write, args.layers)
    if args.measure:
        runs = measure(args.measure, args.rounds, args.pack)
        if args.json:
            args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
