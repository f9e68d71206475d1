"""A DeepGen 1.0 release, opened once, and the one place its files are opened (docs/inference.md#checkpoints).

`Release.open(path, vlm_base=None, dit_base=None)` detects the layout once (the kinds of paths are in
deepgen_model/kinds.py, re-exported here) and reads a native model.pt at most once. It owns the rules of
each layout: which file, folder, key family and config make each component, what may be combined
(`require`), where the tokenizer is. It hands each component out as a `Part` (`scb_part`, `dit_part`,
`vae_part`, `vlm_part`; `scheduler_config`, `tokenizer_sources`): tensors and their checked config for every
layout, folders included, so the builders (loading.py, vlm_loading.py) only build and assign. Every file of a release is opened here (`_torch_load`,
`read_safetensors`, `safetensors_metadata`, `json_file`, `read_tokenizer_files`), so
checks on what a file holds belong here too: each safetensors header and JSON config is checked by
deepgen_model/validation.py before anything is read or built from it.
"""
from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import config_checks, configs, download, validation
from .errors import DeepGenLoadError
from .keys import describe_families, family
# the kinds of paths, re-exported: the loaders, nodes and tests import the one vocabulary from here
from .kinds import (COMPONENTS, CONVERTED, CONVERTED_FILES, DIFFUSERS, DOWNLOAD_HINT, FILE_KINDS,  # noqa: F401
                    FORMAT, LAYOUTS, NATIVE, PART_HINT, QWEN, QWEN_HINT, RELEASE_PARTS, SCB_FAMILIES, SOURCES,
                    TOKENIZER_FILES, UNIPIC2, UNIPIC2_HINT, converted_file, detect_layout, file_kind, folder_kind,
                    native_file)
from .lora import merge_lora_into_state, split_lora
from .mmdit_format import from_mmdit, is_mmdit, strip_saved_prefix

log = logging.getLogger(__name__)

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


def converted_metadata(source, component: str) -> dict[str, str]:
    """The metadata of one converted file, checked: it holds `component`, and its embedded configs (and
    tokenizer files) are sound. No tensor is read."""
    path = converted_file(source, component)
    meta = safetensors_metadata(path, component)
    if meta.get("format") != FORMAT:
        raise DeepGenLoadError(f"{path} is not a DeepGen converted file (metadata format {meta.get('format')!r}, "
                               f"expected {FORMAT!r}); pass {CONVERTED_FILES[component]} written by deepgen_model.convert")
    if meta.get("component") != component:
        raise DeepGenLoadError(f"{path} holds the DeepGen {meta.get('component')!r} component, not {component!r}; "
                               f"pass {CONVERTED_FILES[component]} (or the folder holding it)")
    validation.check_metadata(meta, component, path)
    return meta


def read_converted(source, component: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, checked metadata) of one converted file of `component`."""
    meta = converted_metadata(source, component)
    return _load_safetensors(converted_file(source, component)), meta  # the header was checked with the metadata


def merged_vlm_part(folder: Path, lora: dict, source) -> "Part":
    """A Qwen2.5-VL folder (the vlm_base) with the native LoRA merged in. Its tensors are read into memory of
    their own rather than mapped, and merged there in place: a mapped file's pages would stay resident beside
    merged copies until the last tensor of the file is freed (the merged VLM would peak at twice its size)."""
    headers, config = validation.check_folder(folder, "VLM")  # each missing or damaged shard named first
    tensors = {k: v for f, header in headers.items() for k, v in _read_unmapped(f, header).items()}
    return Part(folder, tensors=merge_lora_into_state(tensors, lora, source=str(source)), config=config)


_ST_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _read_unmapped(path: Path, header: dict) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose header was checked (validation.check_safetensors: offsets within
    the file, weight dtypes only), read with plain file reads."""
    out = {}
    with open(path, "rb") as fh:
        start = 8 + int.from_bytes(fh.read(8), "little")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            fh.seek(start + begin)
            data = bytearray(fh.read(end - begin))
            dtype = _ST_TORCH[info["dtype"]]
            out[name] = torch.frombuffer(data, dtype=dtype).reshape(info["shape"]) if data else \
                torch.empty(info["shape"], dtype=dtype)
    return out


def read_tokenizer_files(source) -> dict[str, str]:
    """The tokenizer files of a folder verbatim, or those embedded in deepgen_vlm.safetensors (checked);
    {} when there are none."""
    source = Path(source)
    if source.is_dir():
        return {f: (source / f).read_text(encoding="utf-8") for f in TOKENIZER_FILES if (source / f).is_file()}
    meta = safetensors_metadata(source, "VLM")
    if "tokenizer_files" not in meta:
        return {}
    validation.check_metadata(meta, "vlm", source)  # the embedded JSON, before it is parsed here
    return json.loads(meta["tokenizer_files"])


def json_file(path: Path, component: str) -> dict:
    """A config file of `component` (VLM, SCB, DiT, VAE, scheduler), parsed and checked."""
    return config_checks.check_config(validation.read_json(path, component), component, path)


def folder_part(folder: Path, component: str) -> "Part":
    """A diffusers or transformers model folder as tensors (memory-mapped) + config: every file it should hold
    there and intact (each missing or damaged one named), no tensor in two files, the config checked and against
    the tensors (validation.check_folder)."""
    headers, config = validation.check_folder(folder, component)
    return Part(folder, tensors={k: v for f in headers for k, v in _load_safetensors(f).items()}, config=config)


def checked_part(name, tensors: dict, config: dict, component: str) -> "Part":
    """A Part whose (already checked) config is also checked against its tensors."""
    config_checks.check_tensors(tensors, config, component, name)
    return Part(name, tensors=tensors, config=config)


def saved_dit_part(path: Path) -> "Part":
    """A DiT saved by ComfyUI's ModelSave from a DeepGen MODEL (or any SD3-family MMDiT file) in diffusers names,
    its config read off the shapes."""
    state = strip_saved_prefix(read_safetensors(path, "DiT"))
    if not is_mmdit(state):
        raise DeepGenLoadError(f"{path} is neither a DeepGen converted DiT (no 'format: {FORMAT}' metadata) nor an "
                               "SD3-family DiT saved by ComfyUI (no joint_blocks/x_embedder tensors); pick the "
                               "DeepGen release, deepgen_dit.safetensors, or a file ModelSave wrote from a DeepGen MODEL")
    tensors, config = from_mmdit(state, path)
    log.info("%s: a DiT saved by ComfyUI (%d blocks, %d heads); no scheduler config inside, shift 3.0",
             path, config["num_layers"], config["num_attention_heads"])
    return checked_part(path, tensors, config, "DiT")


# ---------------------------------------------------------------------------------------------------
# The release


class MissingPart(DeepGenLoadError):
    """A part the loaders need is absent; `kind` is the kind of path that provides it."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Part:
    """One component of a release, whatever its layout: its `tensors` and the `config` the release records for
    them, checked (the config's fields, and the tensors against it), for a builder to build on the meta device
    and assign. `name` (a file or folder) names it in logs and errors."""

    name: object
    tensors: dict[str, torch.Tensor] = field(repr=False)
    config: dict = field(default_factory=dict)


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
            raise DeepGenLoadError(f"vlm_base {vlm_base} has no config.json: it must be {QWEN_HINT}")
        return cls(path, detect_layout(path), vlm_base, dit_base)

    @classmethod
    def of(cls, source) -> "Release":
        """`source` itself when it is a Release (already opened, with its bases), else Release.open(source): what
        every loader takes. A release that needs its bases is opened with them first."""
        return source if isinstance(source, Release) else cls.open(source)

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

    def _roots(self) -> list[Path]:
        """Folders with diffusers-style vae/ and scheduler/: the release's own, then dit_base."""
        return ([self.path] if self.layout == DIFFUSERS else []) + ([self.dit_base] if self.dit_base else [])

    def tokenizer_sources(self) -> list[Path]:
        """Where the VLM's tokenizer may be, in order: the deepgen_vlm.safetensors that embeds it, or folders."""
        if self.layout == CONVERTED:
            return [converted_file(self.path, "vlm")]
        base = [self.vlm_base] if self.vlm_base else []
        return [self.path / "tokenizer", self.path / "vlm", *base] if self.layout == DIFFUSERS else base

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
                    raise MissingPart(f"{self.path} is the native model.pt, which holds only the DiT, the SCB and "
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
                    rel, hint = RELEASE_PARTS[component], PART_HINT.get(component, DOWNLOAD_HINT[DIFFUSERS])
                else:  # the tokenizer is embedded in deepgen_vlm.safetensors
                    rel, hint = CONVERTED_FILES.get(component, CONVERTED_FILES["vlm"]), DOWNLOAD_HINT[CONVERTED]
                missing = self.path / rel
                # its folder is there (a partial download): that one file, not the folder, is what to fetch
                one_file = missing.parent.is_dir() and missing.parent != self.path and download.fetch_hint(missing)
                raise MissingPart(f"missing {rel} in {self.path}; "
                                  + (f"{one_file}." if one_file else f"download {hint} and put it there."), self.layout)
        unused = [b for b, v in (("vlm_base", self.vlm_base), ("dit_base", self.dit_base)) if v is not None and own[b]]
        if unused:
            raise DeepGenLoadError(f"{' and '.join(unused)} are only used with the native model.pt; {self.path} "
                                   "already contains its VLM and VAE. Set them to 'none'.")
        return self


    # ------------------------------------------------------------------ where each component is

    def _converted(self, component: str) -> Part:
        tensors, meta = read_converted(self.path, component)  # the embedded config is checked with the metadata
        name = converted_file(self.path, component)
        return checked_part(name, tensors, json.loads(meta["config"]), component)

    def scb_part(self) -> Part:
        """The SCB connector's tensors and the config the release records for it: the converted file's whole
        config; connector/config.json's head count and layer_norm_eps (the sizes come from the tensors);
        nothing in model.pt."""
        if self.layout == CONVERTED:
            return self._converted("scb")
        if self.layout == NATIVE:
            return Part(self.native_file(), tensors={k: v for k, v in self.native_state().items()
                                                     if family(k) in SCB_FAMILIES})
        name = self.path / RELEASE_PARTS["scb"]
        if not name.exists():  # a folder in its place is named by the header check
            raise DeepGenLoadError(f"{name} is missing: {download.fetch_hint(name)}")
        tensors = read_safetensors(name, "SCB")
        cfg_file = name.parent / "config.json"
        cfg = json_file(cfg_file, "SCB") if cfg_file.exists() else {}
        return Part(name, tensors=tensors, config={k: cfg[k] for k in ("num_attention_heads", "layer_norm_eps")
                                                    if k in cfg})

    def dit_part(self) -> Part:
        """The DiT's tensors (diffusers names) and config: the release's transformer/ folder, deepgen_dit.safetensors,
        a DiT saved by ComfyUI (ModelSave: MMDiT names, config read off the shapes), or every transformer.* tensor
        of model.pt (the DiT was fine-tuned) with the dit_base's config (else the built-in SD3.5-M Kontext one)."""
        if self.layout == DIFFUSERS:
            return folder_part(self.path / RELEASE_PARTS["dit"], "DiT")
        if self.layout == CONVERTED:
            name = converted_file(self.path, "dit")
            if safetensors_metadata(name, "DiT").get("format") == FORMAT:
                return self._converted("dit")
            return saved_dit_part(name)
        name = self.native_file()
        tensors = {k.removeprefix("transformer."): v for k, v in self.native_state().items()
                   if k.startswith("transformer.")}
        if self.dit_base is None:
            log.info("%s: no dit_base; using the built-in SD3.5-M Kontext DiT config", name)
            config = configs.get("dit")
        else:
            cfg_file = self.dit_base / "transformer" / "config.json"
            if not cfg_file.is_file():
                raise DeepGenLoadError(f"{cfg_file} is missing: dit_base must be {UNIPIC2_HINT}")
            config = json_file(cfg_file, "DiT")
        return checked_part(f"{name} (transformer.*)", tensors, config, "DiT")

    def vae_part(self) -> Part:
        """The VAE: deepgen_vae.safetensors, else the vae/ folder of the release or of its dit_base."""
        if self.layout == CONVERTED:
            return self._converted("vae")
        for root in self._roots():
            if (root / "vae" / "config.json").is_file():
                return folder_part(root / "vae", "VAE")
        raise DeepGenLoadError(f"no vae/ folder found for {self}: the native model.pt has no VAE; "
                               f"set dit_base to {UNIPIC2_HINT}")

    def scheduler_config(self) -> dict:
        """The release's (or its dit_base's) scheduler_config.json, or the one deepgen_dit.safetensors embeds;
        else the SD3 default (shift 3.0), logged."""
        for root in self._roots():
            f = root / "scheduler" / "scheduler_config.json"
            if f.is_file():
                return json_file(f, "scheduler")
        if self.layout == CONVERTED:
            name = converted_file(self.path, "dit")
            meta = safetensors_metadata(name, "DiT")
            if "scheduler_config" in meta:
                return validation.parse_config(meta["scheduler_config"], "scheduler", name)
        log.warning("%s: no scheduler_config.json; using FlowMatchEuler shift 3.0 (docs/inference.md#scheduler)", self)
        return configs.get("scheduler")

    def _vlm_folder(self) -> Path:
        """The folder of the VLM's config.json: the release's vlm/, else the vlm_base (native model.pt, or an
        early diffusers release without vlm/)."""
        if self.layout == DIFFUSERS and (self.path / RELEASE_PARTS["vlm"]).is_file():
            return self.path / "vlm"
        if self.vlm_base is not None:
            return self.vlm_base
        if self.layout == DIFFUSERS:
            raise DeepGenLoadError(f"{self.path} has no vlm/ folder (an early DeepGen-1.0-diffusers revision): "
                                   f"download the release's vlm/ folder, or set vlm_base to {QWEN_HINT}")
        raise DeepGenLoadError(f"{self.native_file()} does not contain the VLM: set vlm_base to {QWEN_HINT}")

    def vlm_part(self) -> Part:
        """The VLM: deepgen_vlm.safetensors; the release's vlm/ (LoRA merged); the vlm_base with model.pt's LoRA
        merged in. Stock Qwen weights, with a warning, when model.pt has no LoRA or the release no vlm/."""
        if self.layout == CONVERTED:
            return self._converted("vlm")
        folder = self._vlm_folder()
        if self.layout == DIFFUSERS:
            if folder == self.vlm_base:
                log.warning("%s has no vlm/ folder; using the stock Qwen2.5-VL weights of %s WITHOUT the DeepGen "
                            "LoRA (outputs will differ from the release)", self.path, folder)
            return folder_part(folder, "VLM")
        name = self.native_file()
        lora, _ = split_lora(self.native_state())
        if not lora:
            log.warning("%s has no VLM LoRA tensors; using stock Qwen2.5-VL weights from %s", name, folder)
            return folder_part(folder, "VLM")
        return merged_vlm_part(folder, lora, name)

    def vlm_config(self) -> dict:
        """The VLM's hub-format config (no tensor is read); the converter copies it verbatim."""
        if self.layout == CONVERTED:
            return json.loads(converted_metadata(self.path, "vlm")["config"])
        return json_file(self._vlm_folder() / "config.json", "VLM")

    def tokenizer_files(self) -> dict[str, str]:
        """The tokenizer files verbatim, of the first source that has them (the converter embeds them)."""
        for source in self.tokenizer_sources():
            if files := read_tokenizer_files(source):
                return files
        raise DeepGenLoadError(f"{self}: no tokenizer files found; set vlm_base to {QWEN_HINT}")


__all__ = ["Release", "Part", "MissingPart", "detect_layout", "folder_kind", "file_kind", "load_native_state",
           "read_converted", "safetensors_metadata", "FORMAT", "CONVERTED_FILES", "SOURCES"]
