"""Where DeepGen model files are found: ComfyUI's folder registry (models/deepgen + standard folders).

The "deepgen" folder key is registered with an explicit extension set and without touching paths that
extra_model_paths.yaml already gave it. Widget values are names relative to a registered folder; a
value resolves to a path only if it is one of the listed entries, so no widget can point outside the
registered folders (no "../../etc/passwd").
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import folder_paths

from ..deepgen_model.errors import DeepGenLoadError

FOLDER = "deepgen"
EXTENSIONS = {".safetensors", ".pt", ".pth"}  # explicit: an empty set would mean "every file"
MAX_DEPTH = 3  # release folders may sit one or two levels deep (e.g. models/deepgen/org/name)

# Entry kinds.
RELEASE = "release"  # diffusers release: model_index.json or transformer/ + connector/
NATIVE = "native"  # native checkpoint file (model.pt / *.pth)
QWEN = "qwen"  # a Qwen2.5-VL folder (config.json model_type qwen2_5_vl + weights)
UNIPIC2 = "unipic2"  # UniPic2-SD3.5M-Kontext-2B style folder: transformer/ + vae/ (no connector/)
CONVERTED = "converted"  # a folder holding our converted deepgen_dit.safetensors (+ scb/vlm/vae)
VLM_FILE, SCB_FILE, DIT_FILE, VAE_FILE = "vlm_file", "scb_file", "dit_file", "vae_file"
_FILE_PREFIX = {"deepgen_vlm": VLM_FILE, "deepgen_scb": SCB_FILE, "deepgen_dit": DIT_FILE, "deepgen_vae": VAE_FILE}
# Standard ComfyUI folders that may also hold DeepGen pieces.
_EXTRA_FOLDERS = {VLM_FILE: "text_encoders", QWEN: "text_encoders", DIT_FILE: "diffusion_models",
                  UNIPIC2: "diffusion_models", VAE_FILE: "vae"}

DOWNLOAD_HINT = {
    RELEASE: "the diffusers release deepgenteam/DeepGen-1.0-diffusers (a folder with model_index.json, "
             "transformer/, connector/, vlm/, vae/, scheduler/, tokenizer/)",
    NATIVE: "model.pt of deepgenteam/DeepGen-1.0",
    QWEN: "Qwen/Qwen2.5-VL-3B-Instruct (the whole folder)",
    UNIPIC2: "Skywork/UniPic2-SD3.5M-Kontext-2B (the whole folder)",
    CONVERTED: "the output folder of `python -m deepgen_model.convert`",
    VLM_FILE: "deepgen_vlm.safetensors (made by `python -m deepgen_model.convert`)",
    SCB_FILE: "deepgen_scb.safetensors (made by `python -m deepgen_model.convert`)",
    DIT_FILE: "deepgen_dit.safetensors (made by `python -m deepgen_model.convert`)",
    VAE_FILE: "deepgen_vae.safetensors (made by `python -m deepgen_model.convert`)",
}


def register() -> None:
    """Add <models>/deepgen to the "deepgen" key, keeping any paths extra_model_paths.yaml set."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0]
    if default not in paths:
        paths = [*paths, default]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))
    os.makedirs(default, exist_ok=True)


@dataclass(frozen=True)
class Entry:
    name: str  # the widget value: path relative to its registered folder, "/"-separated
    path: str  # absolute path
    kind: str


def _folder_paths(key: str) -> list[str]:
    try:
        return folder_paths.get_folder_paths(key)
    except KeyError:
        return []


def _is_qwen(path: str, names: set[str]) -> bool:
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        return False
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == "qwen2_5_vl"
    except (OSError, ValueError, AttributeError):
        return False


def _dir_kind(path: str, names: set[str]) -> str | None:
    if "model_index.json" in names and "connector" in names or {"transformer", "connector"} <= names:
        return RELEASE
    if {"transformer", "vae"} <= names:
        return UNIPIC2
    if _is_qwen(path, names):
        return QWEN
    return None


def _file_kind(filename: str) -> str | None:
    stem, ext = os.path.splitext(filename)
    if ext == ".safetensors":
        return next((k for p, k in _FILE_PREFIX.items() if stem.startswith(p)), None)
    if ext in (".pt", ".pth"):
        return NATIVE
    return None


def _scan(root: str) -> list[Entry]:
    """Entries under one registered folder; a recognised release folder is not descended into."""
    found: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        kind = _dir_kind(dirpath, set(dirnames) | set(filenames)) if depth else None
        if kind is not None:
            found.append(Entry(rel.replace(os.sep, "/"), dirpath, kind))
            dirnames[:] = []
            continue
        files = {f: _file_kind(f) for f in filenames}
        for f, k in sorted(files.items()):
            if k is not None:
                name = f if depth == 0 else f"{rel}/{f}".replace(os.sep, "/")
                found.append(Entry(name, os.path.join(dirpath, f), k))
        if depth and "deepgen_dit.safetensors" in files:
            found.append(Entry(rel.replace(os.sep, "/"), dirpath, CONVERTED))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
    return found


def _roots(kinds) -> list[tuple[str, set[str]]]:
    """(directory, kinds looked for there): the deepgen folder holds every kind, a standard folder only its own."""
    pairs = [(root, set(kinds)) for root in _folder_paths(FOLDER)]
    for key in dict.fromkeys(_EXTRA_FOLDERS[k] for k in kinds if k in _EXTRA_FOLDERS):
        wanted = {k for k in kinds if _EXTRA_FOLDERS.get(k) == key}
        pairs += [(root, wanted) for root in _folder_paths(key)]
    return pairs


def folders_for(kinds) -> list[str]:
    """Every directory searched for these kinds, in search order."""
    return list(dict.fromkeys(root for root, _ in _roots(kinds)))


def entries(*kinds: str) -> dict[str, Entry]:
    """name -> Entry for the given kinds across all folders searched; the first folder wins a name."""
    out: dict[str, Entry] = {}
    for root, wanted in _roots(kinds):
        for e in _scan(root):
            if e.kind in wanted:
                out.setdefault(e.name, e)
    return dict(sorted(out.items()))


def choices(*kinds: str) -> list[str]:
    return list(entries(*kinds))


def _not_found(value: str, kinds, what: str) -> str:
    listed = choices(*kinds)
    where = "\n  ".join(folders_for(kinds)) or "(no folder registered)"
    need = "; or ".join(DOWNLOAD_HINT[k] for k in kinds)
    have = f" Available: {', '.join(listed)}." if listed else " None is available."
    return (f"{what}: {value!r} is not one of the DeepGen models found.{have} "
            f"Searched:\n  {where}\nPut {need} into one of these folders, then refresh (press R in the UI).")


def check(value, kinds, what: str) -> bool | str:
    """For validate_inputs: True, or the error text."""
    if isinstance(value, str) and value in entries(*kinds):
        return True
    return _not_found(str(value), kinds, what)


def resolve(value, kinds, what: str) -> Entry:
    """Widget value -> Entry; only listed names resolve (rejects traversal and absolute paths)."""
    found = entries(*kinds).get(value) if isinstance(value, str) else None
    if found is None:
        raise DeepGenLoadError(_not_found(str(value), kinds, what))
    return found


def require(entry: Entry, *relative: str, download: str | None = None) -> str:
    """Path of entry/relative..., or an error naming the missing file and the folder looked in."""
    path = os.path.join(entry.path, *relative)
    if not os.path.exists(path):
        hint = download or DOWNLOAD_HINT.get(entry.kind, "the missing file")
        raise DeepGenLoadError(f"missing {'/'.join(relative)} in {entry.path} (selected as {entry.name!r}); "
                               f"download {hint} and put it there.")
    return path


register()
