"""Builders of the SCB bridge, the DiT and the VAE from a Release (deepgen_model/release.py).

Each takes an opened Release (a path is opened on the spot) and builds on the meta device, assigning
the release's tensors strictly (deepgen_model/assign.py); the VLM and its tokenizer are built by
vlm_loading.py.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from . import configs, validation
from .assign import READ_ERRORS, assign, check_loading_info, check_materialised, file_names, finish, preview
from .bridge import BridgeConfig, SCBBridge
from .errors import DeepGenLoadError
from .keys import describe_families, family
from .precision import cast_floating, parse_dtype
from .release import UNIPIC2_HINT, Release, json_file, read_safetensors, safetensors_metadata, stored_dtype

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Bridge (connector + projectors + think tokens)

_BRIDGE_FAMILIES = ("connector", "projector", "meta_queries")
_BRIDGE_SHAPE_KEYS = ("projector_1.weight", "projector_2.weight", "projector_3.weight", "meta_queries",
                      "connector.layers.0.mlp.fc1.weight")


def load_bridge(release, *, dtype=None, device="cpu", num_attention_heads: int | None = None) -> SCBBridge:
    """SCB bridge of a Release (or a path) of any layout. dtype None keeps the file's dtype (the release's connector is fp32).

    The head count is not visible in tensor shapes: connector/config.json, the converted metadata,
    `num_attention_heads`, or the released default (32), in that order."""
    dtype = parse_dtype(dtype)
    release = Release.of(release)
    layout = release.layout
    if layout == "converted":
        state, meta = release.read_converted("scb")
        name = release.converted_file("scb")
        cfg = BridgeConfig.from_dict(json.loads(meta["config"]))
        if num_attention_heads:
            cfg = dataclasses.replace(cfg, num_attention_heads=num_attention_heads)
    else:
        extra = {}
        if layout == "diffusers":
            name = release.path / "connector" / "model.safetensors"
            if not name.exists():  # a folder in its place is named by the header check
                raise DeepGenLoadError(f"{name} is missing: download the connector/ folder of DeepGen-1.0-diffusers")
            state = read_safetensors(name, "SCB")
            cfg_file = name.parent / "config.json"
            if cfg_file.exists():
                extra = json_file(cfg_file, "SCB")
        else:
            name = release.native_file()
            state = {k: v for k, v in release.native_state().items() if family(k) in _BRIDGE_FAMILIES}
        cfg = _bridge_config(state, name, num_attention_heads or extra.get("num_attention_heads"))
        if "layer_norm_eps" in extra:
            cfg = dataclasses.replace(cfg, layer_norm_eps=float(extra["layer_norm_eps"]))
    if cfg.hidden_size % cfg.num_attention_heads:
        p1 = tuple(state["projector_1.weight"].shape) if "projector_1.weight" in state else None
        raise DeepGenLoadError(f"{name}: connector width {cfg.hidden_size} is not divisible by {cfg.num_attention_heads} "
                               f"heads (the width is the rows of projector_1.weight {p1}): projector_1.weight is "
                               "mis-shaped (a damaged or foreign file), or pass num_attention_heads= (the connector's "
                               "head count)")
    with torch.device("meta"):
        bridge = SCBBridge(cfg)
    assign(bridge, state, name)
    check_materialised(bridge, name)
    log.info("bridge from %s: %d tensors, %d heads", name, len(state), cfg.num_attention_heads)
    return finish(bridge, dtype, device)


def _bridge_config(state: dict, name, heads) -> BridgeConfig:
    missing = [k for k in _BRIDGE_SHAPE_KEYS if k not in state]
    if missing:
        raise DeepGenLoadError(f"{name}: missing tensors ({len(missing)}): {preview(missing)} "
                               f"(found {describe_families(state)})")
    if not heads:
        log.info("%s: no connector config; using the released head count %d", name, BridgeConfig.num_attention_heads)
    try:
        return BridgeConfig.from_state_dict(state, int(heads) if heads else None)
    except (KeyError, IndexError, ZeroDivisionError) as e:
        raise DeepGenLoadError(f"{name}: connector tensors are inconsistent ({e})") from e


# ---------------------------------------------------------------------------------------------------
# DiT and VAE (diffusers modules)


def _diffusers_config(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _build_diffusers(cls, config: dict, state: dict, source, dtype, device):
    validation.check_tensors(state, validation.check_config(config, cls.__name__, source), cls.__name__, source)
    with torch.device("meta"):
        model = cls.from_config(_diffusers_config(config))
    assign(model, cast_floating(state, dtype), source)
    check_materialised(model, source)
    return finish(model, None, device)


def _from_pretrained_folder(cls, folder: Path, dtype, device):
    weights = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").is_file() or not weights:
        raise DeepGenLoadError(f"{folder} needs config.json and *.safetensors weights")
    validation.check_folder(folder, cls.__name__)
    dtype = dtype or stored_dtype(weights)
    try:
        model, info = cls.from_pretrained(str(folder), torch_dtype=dtype, output_loading_info=True)
    except READ_ERRORS as e:
        raise DeepGenLoadError(f"{folder}: could not load {cls.__name__} from {file_names(weights)}: {e}") from e
    check_loading_info(info, folder, weights)
    check_materialised(model, folder)
    return finish(model, None, device)


def load_dit(release, *, base_path=None, dtype=None, device="cpu"):
    """SD3Transformer2DModel (diffusers key names) of a Release (or a path + base_path). Native: every
    transformer.* tensor of model.pt is required (the DiT was fine-tuned); only the architecture comes
    from the dit_base (or the built-in SD3.5-M config when no UniPic2 folder is given)."""
    from diffusers import SD3Transformer2DModel

    dtype = parse_dtype(dtype)
    release = Release.of(release, dit_base=base_path)
    layout = release.layout
    if layout == "diffusers":
        return _from_pretrained_folder(SD3Transformer2DModel, release.path / "transformer", dtype, device)
    if layout == "converted":
        state, meta = release.read_converted("dit")
        return _build_diffusers(SD3Transformer2DModel, json.loads(meta["config"]), state,
                                release.converted_file("dit"), dtype, device)
    name = release.native_file()
    state = {k[len("transformer."):]: v for k, v in release.native_state().items() if k.startswith("transformer.")}
    if release.dit_base is not None:
        cfg_file = release.dit_base / "transformer" / "config.json"
        if not cfg_file.is_file():
            raise DeepGenLoadError(f"{cfg_file} is missing: base_path must be {UNIPIC2_HINT}")
        config = json_file(cfg_file, "DiT")
    else:
        log.info("%s: no base_path; using the built-in SD3.5-M Kontext DiT config", name)
        config = configs.get("dit")
    return _build_diffusers(SD3Transformer2DModel, config, state, f"{name} (transformer.*)", dtype, device)


def load_vae(release, *, base_path=None, dtype=None, device="cpu"):
    """AutoencoderKL of a Release (or a path + base_path): the release's vae/, the dit_base's vae/
    (native), or deepgen_vae.safetensors."""
    from diffusers import AutoencoderKL

    dtype = parse_dtype(dtype)
    release = Release.of(release, dit_base=base_path)
    if release.layout == "converted":
        state, meta = release.read_converted("vae")
        return _build_diffusers(AutoencoderKL, json.loads(meta["config"]), state,
                                release.converted_file("vae"), dtype, device)
    for root in release.roots():
        if (root / "vae" / "config.json").is_file():
            return load_vae_folder(root, dtype=dtype, device=device)
    raise DeepGenLoadError(f"no vae/ folder found for {release}: the native model.pt has no VAE; "
                           f"pass base_path= {UNIPIC2_HINT}")


def load_vae_folder(root, *, dtype=None, device="cpu"):
    """AutoencoderKL of a folder's vae/ (a diffusers release or a UniPic2 folder)."""
    from diffusers import AutoencoderKL

    return _from_pretrained_folder(AutoencoderKL, Path(root) / "vae", parse_dtype(dtype), device)


def load_scheduler_config(release, *, base_path=None) -> dict:
    """The release's (or its dit_base's) scheduler_config.json; else the SD3 default (shift 3.0), logged."""
    release = Release.of(release, dit_base=base_path)
    for root in release.roots():
        f = root / "scheduler" / "scheduler_config.json"
        if f.is_file():
            return json_file(f, "scheduler")
    if release.layout == "converted":
        name = release.converted_file("dit")
        meta = safetensors_metadata(name, "DiT")
        if "scheduler_config" in meta:
            return validation.parse_config(meta["scheduler_config"], "scheduler", name)
    log.warning("%s: no scheduler_config.json; using FlowMatchEuler shift 3.0 (spec §1.7)", release)
    return configs.get("scheduler")


__all__ = ["load_bridge", "load_dit", "load_vae", "load_vae_folder", "load_scheduler_config"]
