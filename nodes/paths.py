"""Where DeepGen model files are found: ComfyUI's folder registry (models/deepgen + standard folders).

The "deepgen" folder key is registered with an explicit extension set and without touching paths that
extra_model_paths.yaml already gave it. Widget values are names relative to a registered folder; a
value resolves to a path only if it is one of the listed entries, so no widget can point outside the
registered folders (no "../../etc/passwd"). What a folder or file is (its kind) is decided by
deepgen_model/kinds.py, the same rule the loaders use.

Listings are cached as core caches its own model lists, and by core's own check: a folder is walked again only
when folder_paths.get_filename_list rebuilds its list of the same folder key (a folder under it changed its mtime,
or a folder joined the key), so a widget refresh or a validation does not walk every model folder again.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import folder_paths

from ..deepgen_model.errors import DeepGenLoadError
from ..deepgen_model.kinds import (CONVERTED, DIFFUSERS, DOWNLOAD_HINT, FILE_KINDS, QWEN, SAVED_DIT, UNIPIC2,
                                   file_kind, folder_kind)

FOLDER = "deepgen"
EXTENSIONS = {".safetensors", ".pt", ".pth"}  # explicit: an empty set would mean "every file"
MAX_DEPTH = 3  # release folders may sit one or two levels deep (e.g. models/deepgen/org/name)

NONE = "none"  # the widget value of an unset optional model
# Standard ComfyUI folders that may also hold DeepGen pieces (kinds: deepgen_model/kinds.py).
_EXTRA_FOLDERS = {FILE_KINDS["vlm"]: "text_encoders", QWEN: "text_encoders", FILE_KINDS["dit"]: "diffusion_models",
                  UNIPIC2: "diffusion_models", SAVED_DIT: "diffusion_models", FILE_KINDS["vae"]: "vae"}


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


def _scan(root: str) -> list[Entry]:
    """Entries under one registered folder; a recognised release folder is not descended into."""
    found: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        kind = folder_kind(dirpath, set(dirnames) | set(filenames)) if depth else None
        if kind in (DIFFUSERS, UNIPIC2, QWEN):
            found.append(Entry(rel.replace(os.sep, "/"), dirpath, kind))
            dirnames[:] = []
            continue
        files = {f: file_kind(f) for f in filenames}
        for f, k in sorted(files.items()):
            if k is not None:
                name = f if depth == 0 else f"{rel}/{f}".replace(os.sep, "/")
                found.append(Entry(name, os.path.join(dirpath, f), k))
        if kind == CONVERTED:
            found.append(Entry(rel.replace(os.sep, "/"), dirpath, CONVERTED))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
    return found


# Folder mtimes tick coarsely (a few ms), so a second change within one tick leaves a folder's mtime, and core's
# list, as they were: a folder changed less than SETTLE seconds before it was walked is walked again at every call.
SETTLE = 2.0
_listed: dict[tuple[str, str], tuple[tuple, float, list[Entry]]] = {}  # (key, root) -> (core's list, when, entries)


def _core_list(key: str):
    """Core's cached (files, {folder: mtime}, time) of a folder key: the same object while nothing under the key
    changed. None where core cannot tell (it raises for a folder removed since it listed it)."""
    try:
        folder_paths.get_filename_list(key)
        return folder_paths.filename_list_cache[key]
    except (KeyError, OSError, AttributeError):
        return None


def _entries_under(key: str, root: str) -> list[Entry]:
    """_scan(root), or its last result while core's list of `key` is the one it was made with and settled."""
    core, seen = _core_list(key), _listed.get((key, root))
    if seen and core is not None and seen[0] is core:
        inside = os.path.join(root, "")
        changed = max((t for d, t in core[1].items() if d == root or d.startswith(inside)), default=0)
        if changed < seen[1] - SETTLE:
            return seen[2]
    found = _scan(root)
    _listed[(key, root)] = (core, time.time(), found)
    return found


def _roots(kinds) -> list[tuple[str, str, set[str]]]:
    """(folder key, directory, kinds looked for there): the deepgen folder holds every kind, a standard folder only
    its own."""
    triples = [(FOLDER, root, set(kinds)) for root in _folder_paths(FOLDER)]
    for key in dict.fromkeys(_EXTRA_FOLDERS[k] for k in kinds if k in _EXTRA_FOLDERS):
        wanted = {k for k in kinds if _EXTRA_FOLDERS.get(k) == key}
        triples += [(key, root, wanted) for root in _folder_paths(key)]
    return triples


def folders_for(kinds) -> list[str]:
    """Every directory searched for these kinds, in search order."""
    return list(dict.fromkeys(root for _, root, _ in _roots(kinds)))


def entries(*kinds: str) -> dict[str, Entry]:
    """name -> Entry for the given kinds across all folders searched; the first folder wins a name."""
    out: dict[str, Entry] = {}
    for key, root, wanted in _roots(kinds):
        for e in _entries_under(key, root):
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


register()
