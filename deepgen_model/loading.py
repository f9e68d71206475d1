"""Builders of the SCB connector, the DiT and the VAE from a Release (deepgen_model/release.py).

Each takes an opened Release (a path is opened on the spot), asks it for its component (a Part: tensors and
their checked config, whatever the layout) and only builds: on the meta device, assigning the tensors strictly
(deepgen_model/assign.py). The VLM and its tokenizer are built by vlm_loading.py.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from .assign import assign, check_materialised, check_names_and_shapes, finish, preview
from .errors import DeepGenLoadError
from .keys import describe_families
from .precision import cast_floating, parse_dtype
from .release import Part, Release, folder_part
from .scb import SCBConfig, SCBConnector

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# SCB (connector + projectors + think tokens)

_SCB_SHAPE_KEYS = ("projector_1.weight", "projector_2.weight", "projector_3.weight", "meta_queries",
                   "connector.layers.0.mlp.fc1.weight")


def load_scb(release, *, dtype=None, device="cpu", num_attention_heads: int | None = None) -> SCBConnector:
    """SCB connector of a Release (or a path) of any layout. dtype None keeps the file's dtype (the release's connector is fp32).

    Sizes come from the tensor shapes, overridden by the config the release records. The head count is not
    visible in shapes: `num_attention_heads`, the recorded config (connector/config.json, the converted
    metadata), or the released default (32), in that order."""
    dtype = parse_dtype(dtype)
    part = Release.of(release).scb_part()
    state, name = part.tensors, part.name
    sizes = dataclasses.asdict(_scb_config(state, name, num_attention_heads or part.config.get("num_attention_heads")))
    cfg = SCBConfig.from_dict({**sizes, **part.config, "num_attention_heads": sizes["num_attention_heads"]})
    if cfg.hidden_size % cfg.num_attention_heads:
        p1 = tuple(state["projector_1.weight"].shape) if "projector_1.weight" in state else None
        raise DeepGenLoadError(f"{name}: connector width {cfg.hidden_size} is not divisible by {cfg.num_attention_heads} "
                               f"heads (the width is the rows of projector_1.weight {p1}): projector_1.weight is "
                               "mis-shaped (a damaged or foreign file), or pass num_attention_heads= (the connector's "
                               "head count)")
    with torch.device("meta"):
        scb = SCBConnector(cfg)
    assign(scb, state, name)
    check_materialised(scb, name)
    log.info("SCB from %s: %d tensors, %d heads", name, len(state), cfg.num_attention_heads)
    return finish(scb, dtype, device)


def _scb_config(state: dict, name, heads) -> SCBConfig:
    missing = [k for k in _SCB_SHAPE_KEYS if k not in state]
    if missing:
        raise DeepGenLoadError(f"{name}: missing tensors ({len(missing)}): {preview(missing)} "
                               f"(found {describe_families(state)})")
    if not heads:
        log.info("%s: no connector config; using the released head count %d", name, SCBConfig.num_attention_heads)
    try:
        return SCBConfig.from_state_dict(state, int(heads) if heads else None)
    except (KeyError, IndexError, ZeroDivisionError) as e:
        raise DeepGenLoadError(f"{name}: connector tensors are inconsistent ({e})") from e


# ---------------------------------------------------------------------------------------------------
# DiT and VAE (diffusers modules)


def _build(cls, part: Part, dtype, device):
    """A diffusers module built on meta from a Part's config, its tensors assigned."""
    with torch.device("meta"):
        model = cls.from_config({k: v for k, v in part.config.items() if not k.startswith("_")})
    model.register_to_config(_name_or_path=str(part.name))  # where it came from, as from_pretrained records it
    assign(model, cast_floating(part.tensors, dtype), part.name)
    check_materialised(model, part.name)
    return finish(model, None, device)


def load_dit(release, *, dtype=None, device="cpu"):
    """SD3Transformer2DModel (diffusers key names) of a Release (or a path; Release.open(path, vlm_base=, dit_base=) for the native model.pt); see Release.dit_part."""
    from diffusers import SD3Transformer2DModel

    dtype = parse_dtype(dtype)
    return _build(SD3Transformer2DModel, Release.of(release).dit_part(), dtype, device)


def dit_weights(release) -> tuple[dict, dict]:
    """The DiT's tensors (diffusers names) and config of a Release (or a path), checked name by name and shape
    by shape against the diffusers module (built on meta), so errors name the file's own keys, for building it
    in another implementation (ComfyUI's MMDiT: deepgen_model.mmdit_format converts the names)."""
    from diffusers import SD3Transformer2DModel

    part = Release.of(release).dit_part()
    with torch.device("meta"):
        reference = SD3Transformer2DModel.from_config({k: v for k, v in part.config.items() if not k.startswith("_")})
    check_names_and_shapes(reference, part.tensors, part.name)
    return part.tensors, part.config


def load_vae(release, *, dtype=None, device="cpu"):
    """AutoencoderKL of a Release (or a path; Release.open(path, vlm_base=, dit_base=) for the native model.pt): the release's vae/, the dit_base's vae/
    (native), or deepgen_vae.safetensors."""
    from diffusers import AutoencoderKL

    dtype = parse_dtype(dtype)
    return _build(AutoencoderKL, Release.of(release).vae_part(), dtype, device)


def load_vae_folder(root, *, dtype=None, device="cpu"):
    """AutoencoderKL of a folder's vae/ (a diffusers release or a UniPic2 folder)."""
    from diffusers import AutoencoderKL

    return _build(AutoencoderKL, folder_part(Path(root) / "vae", "VAE"), parse_dtype(dtype), device)


def load_scheduler_config(release) -> dict:
    """The scheduler config of a Release (or a path; Release.open(path, vlm_base=, dit_base=) for the native model.pt); see Release.scheduler_config."""
    return Release.of(release).scheduler_config()


__all__ = ["load_scb", "load_dit", "dit_weights", "load_vae", "load_vae_folder", "load_scheduler_config"]
