"""What a DeepGen 1.0 release is, and the one place its files are opened (spec §3).

Layouts:
  diffusers  deepgenteam/DeepGen-1.0-diffusers folder: model_index.json, transformer/, connector/,
             vlm/ (LoRA already merged), vae/, scheduler/, tokenizer/
  native     deepgenteam/DeepGen-1.0 model.pt (or its folder): transformer.*, connector.*, projector_*,
             meta_queries and maybe the VLM LoRA; the Qwen2.5-VL base (vlm_base) and the UniPic2
             folder (dit_base: VAE, scheduler, DiT config) come from elsewhere (pitfall 22)
  converted  our deepgen_{dit,scb,vlm,vae}.safetensors (deepgen_model.convert), configs in metadata

`Release.open(path, vlm_base=None, dit_base=None)` detects the layout once and reads a native model.pt
at most once; the builders (loading.py, vlm_loading.py) take the Release. Every file of a release is
opened here (`_torch_load`, `read_safetensors`, `safetensors_metadata`, `safetensors_header`,
`json_file`), so checks on what a file holds belong here too: each safetensors header and JSON config is
checked by deepgen_model/validation.py before anything is read or built from it. The kinds below are the one vocabulary
for what a path is, shared by the loaders and the ComfyUI model lists (nodes/paths.py).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import validation
from .errors import DeepGenLoadError
from .keys import describe_families
from .precision import dominant_dtype

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Kinds of paths (layouts of a release, plus the bases and single converted files)

DIFFUSERS = "diffusers"  # DeepGen-1.0-diffusers folder: model_index.json or transformer/ + connector/
NATIVE = "native"  # native checkpoint file (model.pt / *.pth), or a folder holding exactly one
CONVERTED = "converted"  # deepgen_*.safetensors (a file, or a folder holding them)
QWEN = "qwen"  # a Qwen2.5-VL folder (config.json model_type qwen2_5_vl + weights)
UNIPIC2 = "unipic2"  # UniPic2-SD3.5M-Kontext-2B style folder: transformer/ + vae/ (no connector/)
COMPONENTS = ("dit", "scb", "vlm", "vae")
FILE_KINDS = {c: f"{c}_file" for c in COMPONENTS}  # one converted component file: "vlm_file", ...
LAYOUTS = (DIFFUSERS, NATIVE, CONVERTED)

# What each loader accepts, by kind.
SOURCES = {
    "checkpoint": (DIFFUSERS, NATIVE, CONVERTED),
    "dit": (DIFFUSERS, CONVERTED, FILE_KINDS["dit"], NATIVE),
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
    **{FILE_KINDS[c]: f"{CONVERTED_FILES[c]} {_CONVERT}" for c in COMPONENTS},
}
_PART_HINT = {"vlm": "the release's vlm/ folder (LoRA merged), or use a Qwen2.5-VL-3B-Instruct folder with the "
                     "VLM LoRA of the native model.pt",
              "tokenizer": "the release's tokenizer/ folder"}


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
        return next((FILE_KINDS[c] for c in COMPONENTS if stem.startswith(f"deepgen_{c}")), None)
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


# ---------------------------------------------------------------------------------------------------
# Raw readers: every file of a release is opened by one of these


def load_native_state(path) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a native model.pt. Only weights_only unpickling: a file carrying code is
    refused, never executed."""
    path = native_file(path)
    try:
        obj = _torch_load(path, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # pre-zipfile torch.save format cannot be memory-mapped
            raise DeepGenLoadError(f"{path} could not be read as a PyTorch checkpoint: {e}") from e
        obj = _torch_load(path, mmap=False)
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and not any(
                isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise DeepGenLoadError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if skipped := sorted(set(obj) - set(state)):
        log.warning("%s: ignoring %d non-tensor entries: %s", path, len(skipped), skipped[:5])
    dtypes = Counter(str(v.dtype).removeprefix("torch.") for v in state.values())
    log.info("%s: %d tensors (%s); dtypes %s", path, len(state), describe_families(state), dict(dtypes))
    return state


def _torch_load(path: Path, mmap: bool):
    try:
        return torch.load(str(path), map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeepGenLoadError(
            f"{path} was refused: it is not a plain tensor checkpoint and may carry executable code ({reason}). "
            "Only weights_only loading is allowed; use the official DeepGen-1.0 model.pt or a "
            "safetensors conversion from a trusted source.") from e
    except (OSError, EOFError, ValueError) as e:
        raise DeepGenLoadError(f"{path} could not be read as a PyTorch checkpoint: {e}") from e


def read_safetensors(path: Path, component: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of `component` (VLM, SCB, DiT, VAE), its header checked first."""
    validation.check_safetensors(path, component)
    return _load_safetensors(path)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise DeepGenLoadError(f"{path} could not be read as safetensors: {e}") from e


def safetensors_metadata(path, component: str) -> dict[str, str]:
    """The __metadata__ of a safetensors file of `component`, from its checked header (no tensor is read)."""
    return validation.check_safetensors(path, component).get("__metadata__", {})


def safetensors_header(path) -> dict:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes), without reading tensors."""
    with open(path, "rb") as fh:
        return json.loads(fh.read(int.from_bytes(fh.read(8), "little")))


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def stored_dtype(files) -> torch.dtype | None:
    """The dominant floating dtype recorded in safetensors headers (no tensor is read)."""
    return dominant_dtype(torch.empty(v["shape"], dtype=_ST_DTYPES[v["dtype"]], device="meta")
                          for f in files for k, v in safetensors_header(f).items()
                          if k != "__metadata__" and v["dtype"] in _ST_DTYPES)


def read_converted(source, component: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of one converted file, checking that it holds `component` and that its embedded
    configs (and tokenizer files) are sound."""
    path = converted_file(source, component)
    meta = safetensors_metadata(path, component)
    if meta.get("format") != FORMAT:
        raise DeepGenLoadError(f"{path} is not a DeepGen converted file (metadata format {meta.get('format')!r}, "
                               f"expected {FORMAT!r}); pass {CONVERTED_FILES[component]} written by deepgen_model.convert")
    if meta.get("component") != component:
        raise DeepGenLoadError(f"{path} holds the DeepGen {meta.get('component')!r} component, not {component!r}; "
                               f"pass {CONVERTED_FILES[component]} (or the folder holding it)")
    validation.check_metadata(meta, component, path)
    return _load_safetensors(path), meta  # the header was checked by safetensors_metadata


def json_file(path: Path, component: str) -> dict:
    """A config file of `component` (VLM, SCB, DiT, VAE, scheduler), parsed and checked."""
    return validation.check_config(validation.read_json(path, component), component, path)


# ---------------------------------------------------------------------------------------------------
# The release


class MissingPart(DeepGenLoadError):
    """A part the loaders need is absent; `kind` is the kind of path that provides it."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Release:
    """One release on disk, opened once: its layout, its bases, and (native) its model.pt tensors."""

    path: Path
    layout: str
    vlm_base: Path | None = None
    dit_base: Path | None = None
    _native: dict | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path, vlm_base=None, dit_base=None) -> "Release":
        """Detect the layout of `path` (once). vlm_base: the Qwen2.5-VL folder and dit_base: the UniPic2
        folder, which only a native model.pt (or a diffusers release without vlm/) needs."""
        path = Path(path).expanduser()
        vlm_base = Path(vlm_base).expanduser() if vlm_base else None
        dit_base = Path(dit_base).expanduser() if dit_base else None
        if vlm_base is not None and not (vlm_base / "config.json").is_file():
            raise DeepGenLoadError(f"base_vlm_path {vlm_base} has no config.json: it must be {QWEN_HINT}")
        return cls(path, detect_layout(path), vlm_base, dit_base)

    @classmethod
    def of(cls, source, vlm_base=None, dit_base=None) -> "Release":
        """`source` itself when it is a Release (already opened: its bases are its own), else Release.open."""
        if isinstance(source, Release):
            if vlm_base is not None or dit_base is not None:
                raise DeepGenLoadError("pass the bases to Release.open, not with an opened Release")
            return source
        return cls.open(source, vlm_base, dit_base)

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ files of the release

    def native_file(self) -> Path:
        return native_file(self.path)

    def native_state(self) -> dict[str, torch.Tensor]:
        """All tensors of model.pt (memory-mapped), read on first use and kept for the other components."""
        if self._native is None:
            self._native = load_native_state(self.path)
        return self._native

    def converted_file(self, component: str) -> Path:
        return converted_file(self.path, component)

    def read_converted(self, component: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return read_converted(self.path, component)

    def roots(self) -> list[Path]:
        """Folders with diffusers-style vae/ and scheduler/: the release's own, then dit_base."""
        return ([self.path] if self.layout == DIFFUSERS else []) + ([self.dit_base] if self.dit_base else [])

    def tokenizer_dirs(self) -> list[Path]:
        """Folders that may hold the tokenizer, in order (a converted release embeds its own)."""
        if self.layout == DIFFUSERS:
            return [d for d in (self.path / "tokenizer", self.path / "vlm", self.vlm_base) if d is not None]
        return [self.vlm_base] if self.layout == NATIVE and self.vlm_base else []

    # ------------------------------------------------------------------ what may be combined

    def _has(self, component: str) -> bool:
        """Whether the release itself holds `component` (a single converted file holds only its own)."""
        if self.layout == DIFFUSERS:
            return (self.path / RELEASE_PARTS[component]).exists()
        if self.layout == CONVERTED:
            name = CONVERTED_FILES.get(component, CONVERTED_FILES["vlm"])  # the tokenizer is embedded in the VLM's
            return (self.path / name).is_file() if self.path.is_dir() else True
        return component in ("dit", "scb")

    def require(self, *components: str) -> "Release":
        """Refuse, naming the file or base to add, a release that cannot provide `components` (any of
        dit, scb, vlm, vae, tokenizer), or a base it would not use."""
        if self.layout == NATIVE:
            for base, value, kind, parts in (("vlm_base", self.vlm_base, QWEN, {"vlm", "tokenizer"}),
                                             ("dit_base", self.dit_base, UNIPIC2, {"vae"})):
                if value is None and parts & set(components):
                    raise MissingPart(f"{self.path} is the native model.pt, which holds only the DiT, the bridge and "
                                      f"the VLM LoRA: set {base} to {DOWNLOAD_HINT[kind]}.", kind)
            return self
        own = {"vlm_base": self._has("vlm"), "dit_base": self._has("vae")}
        for component in components:
            if component == "vlm" and self.vlm_base is not None and not own["vlm_base"]:
                continue  # an early diffusers revision without vlm/: the stock base (load_vlm warns)
            if component == "vae" and self.dit_base is not None and not own["dit_base"]:
                continue
            if not self._has(component):
                if self.layout == DIFFUSERS:
                    rel, hint = RELEASE_PARTS[component], _PART_HINT.get(component, DOWNLOAD_HINT[DIFFUSERS])
                else:  # the tokenizer is embedded in deepgen_vlm.safetensors
                    rel, hint = CONVERTED_FILES.get(component, CONVERTED_FILES["vlm"]), DOWNLOAD_HINT[CONVERTED]
                raise MissingPart(f"missing {rel} in {self.path}; download {hint} and put it there.", self.layout)
        unused = [b for b, v in (("vlm_base", self.vlm_base), ("dit_base", self.dit_base)) if v is not None and own[b]]
        if unused:
            raise DeepGenLoadError(f"{' and '.join(unused)} are only used with the native model.pt; {self.path} "
                                   "already contains its VLM and VAE. Set them to 'none'.")
        return self


__all__ = ["Release", "MissingPart", "detect_layout", "folder_kind", "file_kind", "load_native_state",
           "read_converted", "safetensors_metadata", "FORMAT", "CONVERTED_FILES", "SOURCES"]
