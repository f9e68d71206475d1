"""What a path is, in one vocabulary shared by the loaders (deepgen_model/release.py) and the ComfyUI
model lists (nodes/paths.py): the layouts of a DeepGen 1.0 release (docs/inference.md#checkpoints), its bases, single converted
files, and the names of the files each holds. Only names and folder listings are looked at here (and a
Qwen folder's config.json); deepgen_model/release.py reads the files.

Layouts:
  diffusers  deepgenteam/DeepGen-1.0-diffusers folder: model_index.json, transformer/, connector/,
             vlm/ (LoRA already merged), vae/, scheduler/, tokenizer/
  native     deepgenteam/DeepGen-1.0 model.pt (or its folder): transformer.*, connector.*, projector_*,
             meta_queries and maybe the VLM LoRA; the Qwen2.5-VL base (vlm_base) and the UniPic2
             folder (dit_base: VAE, scheduler, DiT config) come from elsewhere (docs/inference.md#pitfall-22)
  converted  our deepgen_{dit,scb,vlm,vae}.safetensors (deepgen_model.convert), configs in metadata
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .errors import DeepGenLoadError

DIFFUSERS = "diffusers"  # DeepGen-1.0-diffusers folder: model_index.json or transformer/ + connector/
NATIVE = "native"  # native checkpoint file (model.pt / *.pth), or a folder holding exactly one
CONVERTED = "converted"  # deepgen_*.safetensors (a file, or a folder holding them)
QWEN = "qwen"  # a Qwen2.5-VL folder (config.json model_type qwen2_5_vl + weights)
UNIPIC2 = "unipic2"  # UniPic2-SD3.5M-Kontext-2B style folder: transformer/ + vae/ (no connector/)
COMPONENTS = ("dit", "scb", "vlm", "vae")
# One vocabulary: each component's key (files, loaders, Release methods, the nodes' model lists) and the name
# messages and docs give it. The SCB connector is "scb" in code and files, "SCB" to people (the model class that
# implements it is SCBConnector); the DiT is "dit" / "DiT" (diffusers calls its class, and the release its folder,
# "transformer"). Older spellings are understood, never written.
COMPONENT_NAMES = {"vlm": "VLM", "scb": "SCB", "dit": "DiT", "vae": "VAE", "tokenizer": "tokenizer",
                   "scheduler": "scheduler"}
_OLD_COMPONENT_SPELLINGS = {"scb": "scb", "connector": "scb", "transformer": "dit"}
# The two base folders the native model.pt needs: one name each, the ComfyUI widget's, in every message and
# parameter (older spellings at the public edges: vlm_path / base_vlm_path, base_path; deprecated).
VLM_BASE, DIT_BASE = "vlm_base", "dit_base"
FILE_KINDS = {c: f"{c}_file" for c in COMPONENTS}  # one converted component file: "vlm_file", ...
SAVED_DIT = "saved_dit"  # any other .safetensors: maybe a DiT saved by ComfyUI's ModelSave (the DiT loader tells)
LAYOUTS = (DIFFUSERS, NATIVE, CONVERTED)

# What each loader accepts, by kind.
SOURCES = {
    "checkpoint": (DIFFUSERS, NATIVE, CONVERTED),
    "dit": (DIFFUSERS, CONVERTED, FILE_KINDS["dit"], NATIVE, SAVED_DIT),
    "scb": (DIFFUSERS, NATIVE, FILE_KINDS["scb"]),
    "vlm": (DIFFUSERS, QWEN, FILE_KINDS["vlm"]),
    "vae": (DIFFUSERS, UNIPIC2, CONVERTED, FILE_KINDS["vae"]),
    "vlm_base": (QWEN,),
    "dit_base": (UNIPIC2, DIFFUSERS),
    "lora": (NATIVE,),
}

FORMAT = "deepgen-1.0"
CONVERTED_FILES = {c: f"deepgen_{c}.safetensors" for c in COMPONENTS}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja")
NATIVE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SCB_FAMILIES = ("connector", "projector", "meta_queries")  # model.pt's key families of the SCB connector
# the diffusers release's folder (and file) that holds each component
RELEASE_PARTS = {"dit": "transformer", "scb": "connector/model.safetensors", "vlm": "vlm/config.json",
                 "vae": "vae", "tokenizer": "tokenizer"}

QWEN_HINT = "a Qwen2.5-VL-3B-Instruct folder (huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct)"
UNIPIC2_HINT = "the UniPic2-SD3.5M-Kontext-2B folder (huggingface.co/Skywork/UniPic2-SD3.5M-Kontext-2B)"
_CONVERT = "(made by `python -m deepgen_model.convert`)"
DOWNLOAD_HINT = {
    DIFFUSERS: "the diffusers release deepgenteam/DeepGen-1.0-diffusers (a folder with model_index.json, "
               "transformer/, connector/, vlm/, vae/, scheduler/, tokenizer/)",
    NATIVE: "model.pt of deepgenteam/DeepGen-1.0",
    QWEN: "Qwen/Qwen2.5-VL-3B-Instruct (the whole folder)",
    UNIPIC2: "Skywork/UniPic2-SD3.5M-Kontext-2B (the whole folder)",
    CONVERTED: "the output folder of `python -m deepgen_model.convert`",
    SAVED_DIT: "a DiT saved with ModelSave from a DeepGen MODEL (into models/diffusion_models)",
    **{FILE_KINDS[c]: f"{CONVERTED_FILES[c]} {_CONVERT}" for c in COMPONENTS},
}
PART_HINT = {"vlm": "the release's vlm/ folder (LoRA merged), or use a Qwen2.5-VL-3B-Instruct folder with the "
                     "VLM LoRA of the native model.pt",
              "tokenizer": "the release's tokenizer/ folder"}


def renamed_bases(vlm_base, dit_base, vlm_path=None, base_path=None, where: str = "") -> tuple:
    """(vlm_base, dit_base), accepting the deprecated spellings vlm_path / base_path with a warning."""
    for old, new, value in (("vlm_path", VLM_BASE, vlm_path), ("base_path", DIT_BASE, base_path)):
        if value is not None:
            warnings.warn(f"{where}{old}= is deprecated: pass {new}=", DeprecationWarning, stacklevel=3)
    return (vlm_base if vlm_base is not None else vlm_path), (dit_base if dit_base is not None else base_path)


def component_name(component: str) -> str:
    """The name people read ('VLM', 'SCB', 'DiT', 'VAE', 'tokenizer', 'scheduler') of a component key, of a name
    already in that form, or of an older spelling."""
    key = _OLD_COMPONENT_SPELLINGS.get(component.lower(), component.lower())
    return COMPONENT_NAMES.get(key, component)


def _is_qwen(folder: Path, names: set[str]) -> bool:
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        return False
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == "qwen2_5_vl"
    except (OSError, ValueError, AttributeError):
        return False


def folder_kind(folder, names: set[str] | None = None) -> str | None:
    """The kind of a folder (None: none of ours). `names`: its entries, when the caller listed them."""
    folder = Path(folder)
    names = set(os.listdir(folder)) if names is None else names
    if "connector" in names and ("model_index.json" in names or "transformer" in names):
        return DIFFUSERS
    if {"transformer", "vae"} <= names:
        return UNIPIC2
    if _is_qwen(folder, names):
        return QWEN
    if "model.pt" in names or len(_native_candidates(folder, names)) == 1:
        return NATIVE
    if any(f in names for f in CONVERTED_FILES.values()):
        return CONVERTED
    return None


def file_kind(filename: str) -> str | None:
    """The kind of a file, by its name: a native checkpoint or one of our converted files."""
    stem, ext = os.path.splitext(filename)
    if ext == ".safetensors":
        return next((FILE_KINDS[c] for c in COMPONENTS if stem.startswith(f"deepgen_{c}")), SAVED_DIT)
    if ext in (".pt", ".pth"):
        return NATIVE
    return None


def detect_layout(path) -> str:
    """'diffusers' | 'native' | 'converted' for a release folder or file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DeepGenLoadError(f"{p} does not exist")
    if p.is_file():
        if p.suffix == ".safetensors":
            return CONVERTED
        if p.suffix in NATIVE_SUFFIXES:
            return NATIVE
        raise DeepGenLoadError(f"{p} is not a DeepGen checkpoint: expected model.pt or deepgen_*.safetensors")
    kind = folder_kind(p)
    if kind in LAYOUTS:
        return kind
    raise DeepGenLoadError(
        f"{p} is not a DeepGen 1.0 folder: expected the DeepGen-1.0-diffusers layout (model_index.json, "
        "transformer/, connector/, vlm/ ...), the native model.pt, or deepgen_*.safetensors from deepgen_model.convert"
        + {QWEN: f"; it is {QWEN_HINT}, the vlm_base of the native model.pt",
           UNIPIC2: f"; it is {UNIPIC2_HINT}, the dit_base of the native model.pt"}.get(kind, ""))


def _native_candidates(folder: Path, names=None) -> list[Path]:
    names = os.listdir(folder) if names is None else names
    return sorted(folder / n for n in names if Path(n).suffix in NATIVE_SUFFIXES and (folder / n).is_file())


def native_file(source) -> Path:
    p = Path(source).expanduser()
    if p.is_file():
        return p
    if (p / "model.pt").is_file():
        return p / "model.pt"
    found = _native_candidates(p)
    if len(found) != 1:
        raise DeepGenLoadError(f"{p}: expected one model.pt checkpoint, found {[f.name for f in found]}")
    return found[0]


def converted_file(source, component: str) -> Path:
    p = Path(source).expanduser()
    if p.is_dir():
        p = p / CONVERTED_FILES[component]
        if not p.is_file():
            raise DeepGenLoadError(f"{p} is missing; run `python -m deepgen_model.convert` to create it")
    return p
