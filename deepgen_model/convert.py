"""Convert any DeepGen 1.0 release layout into four self-describing safetensors files.

    python -m deepgen_model.convert SRC DST_DIR [--vlm-path Q] [--base-path U] [--dtype bf16|fp16|fp32] [--force]

Writes deepgen_dit.safetensors, deepgen_scb.safetensors, deepgen_vlm.safetensors (LoRA merged, legacy
key names, hub config.json + tokenizer files in the metadata) and deepgen_vae.safetensors, each with
metadata {"format": "deepgen-1.0", "component": ..., "config": JSON, ...}. Reloading them needs no
other folder and no pickle. Components are converted one at a time to bound peak memory.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

from .errors import DeepGenError, DeepGenLoadError
from .kinds import renamed_bases

# torch/transformers/diffusers are imported only when converting, so --help stays instant.
log = logging.getLogger(__name__)
COMPONENTS = ("dit", "scb", "vlm", "vae")


def _diffusers_config_json(model) -> str:
    return json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(model.config).items()
                       if not k.startswith("_")}, sort_keys=True)


def _save(path: Path, state: dict, component: str, config: str, dtype, **extra: str) -> int:
    from safetensors.torch import save_file

    from .release import FORMAT

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {"format": FORMAT, "component": component, "config": config, **extra}
    if dtype is not None:
        metadata["dtype"] = str(dtype).removeprefix("torch.")
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # never leave a truncated file under the final name
    return path.stat().st_size


def convert(src, dst_dir, *, vlm_base=None, dit_base=None, dtype=None, force=False,
            connector_heads=None, components=COMPONENTS, vlm_path=None, base_path=None) -> dict[str, Path]:
    """Convert `src` (any layout) into DST_DIR; returns {component: written path}. vlm_path / base_path: the
    deprecated names of vlm_base / dit_base."""
    import torch

    from .release import CONVERTED_FILES, Release
    from .precision import parse_dtype

    dtype = parse_dtype(dtype)
    dst = Path(dst_dir).expanduser()
    targets = {c: dst / CONVERTED_FILES[c] for c in components}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise DeepGenLoadError(f"refusing to overwrite {', '.join(existing)}; pass --force to replace them")
    if Path(src).expanduser().resolve() == dst.resolve():
        raise DeepGenLoadError(f"DST_DIR {dst} must differ from SRC")
    vlm_base, dit_base = renamed_bases(vlm_base, dit_base, vlm_path, base_path, "convert: ")
    release = Release.open(src, vlm_base=vlm_base, dit_base=dit_base)  # model.pt is read once for all parts
    dst.mkdir(parents=True, exist_ok=True)
    written = {}
    for component, path in targets.items():
        with torch.no_grad():
            size = _convert_one(component, release, path, dtype=dtype, connector_heads=connector_heads)
        print(f"wrote {path} ({size / 2**20:.1f} MiB)")
        written[component] = path
        gc.collect()
    return written


def _convert_one(component, release, path, *, dtype, connector_heads) -> int:
    from .loading import load_scb, load_dit, load_scheduler_config, load_vae
    from .vlm_loading import load_vlm, vlm_legacy_state

    if component == "dit":
        dit = load_dit(release, dtype=dtype)
        scheduler = json.dumps(load_scheduler_config(release), sort_keys=True)
        return _save(path, dit.state_dict(), "dit", _diffusers_config_json(dit), dtype, scheduler_config=scheduler)
    if component == "scb":
        scb = load_scb(release, dtype=dtype, num_attention_heads=connector_heads)
        return _save(path, scb.state_dict(), "scb", scb.config.to_json(), dtype)
    if component == "vae":
        vae = load_vae(release, dtype=dtype)
        return _save(path, vae.state_dict(), "vae", _diffusers_config_json(vae), dtype)
    if component == "vlm":
        # copied verbatim, so that the converted file loads in transformers 4.x and 5.x alike
        config, tokenizer_files = release.vlm_config(), release.tokenizer_files()
        vlm, _ = load_vlm(release, dtype=dtype)
        if dtype is not None:
            config = {**config, "torch_dtype": str(dtype).removeprefix("torch.")}
        return _save(path, vlm_legacy_state(vlm), "vlm", json.dumps(config, sort_keys=True), dtype,
                     tokenizer_files=json.dumps(tokenizer_files, sort_keys=True))
    raise DeepGenLoadError(f"unknown component {component!r}; choose from {COMPONENTS}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepgen_model.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="DeepGen-1.0-diffusers folder, native model.pt (or its folder), or converted files")
    parser.add_argument("dst_dir", help="output folder for deepgen_*.safetensors")
    parser.add_argument("--vlm-base", "--vlm-path", dest="vlm_base",
                        help="Qwen2.5-VL-3B-Instruct folder (needed for a native model.pt; --vlm-path: its old name)")
    parser.add_argument("--dit-base", "--base-path", dest="dit_base", help="UniPic2-SD3.5M-Kontext-2B folder "
                        "(VAE/scheduler for a native model.pt; --base-path: its old name)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="cast all weights (default: keep as stored)")
    parser.add_argument("--connector-heads", type=int, help="connector head count when SRC has no connector "
                        "config (native model.pt; default: the released 32)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        convert(args.src, args.dst_dir, vlm_base=args.vlm_base, dit_base=args.dit_base, dtype=args.dtype,
                force=args.force, connector_heads=args.connector_heads)
    except DeepGenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
