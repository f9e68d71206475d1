"""Loading every DeepGen 1.0 release layout (spec §3).

Layouts:
  diffusers  deepgenteam/DeepGen-1.0-diffusers folder: model_index.json, transformer/, connector/,
             vlm/ (LoRA already merged), vae/, scheduler/, tokenizer/
  native     deepgenteam/DeepGen-1.0 model.pt (or its folder): transformer.*, connector.*, projector_*,
             meta_queries and maybe the VLM LoRA; the Qwen2.5-VL base (base_vlm_path) and the UniPic2
             folder (base_path: VAE, scheduler, DiT config) come from elsewhere (pitfall 22)
  converted  our deepgen_{dit,scb,vlm,vae}.safetensors (deepgen_model.convert), configs in metadata

Tensors are assigned into modules built on the meta device (no second copy); safetensors and
model.pt are memory-mapped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import tempfile
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError

from . import configs
from .bridge import BridgeConfig, SCBBridge
from .errors import DeepGenLoadError
from .keys import describe_families, family, normalize_vlm_keys, to_legacy
from .lora import merge_lora_into_state, split_lora
from .precision import parse_dtype, resolve_dtypes

log = logging.getLogger(__name__)

FORMAT = "deepgen-1.0"
CONVERTED_FILES = {"dit": "deepgen_dit.safetensors", "scb": "deepgen_scb.safetensors",
                   "vlm": "deepgen_vlm.safetensors", "vae": "deepgen_vae.safetensors"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
QUANTIZATIONS = ("8bit", "nf4")
_NATIVE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
QWEN_HINT = "a Qwen2.5-VL-3B-Instruct folder (huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct)"
UNIPIC2_HINT = "the UniPic2-SD3.5M-Kontext-2B folder (huggingface.co/Skywork/UniPic2-SD3.5M-Kontext-2B)"


# ---------------------------------------------------------------------------------------------------
# Layout detection


def detect_layout(path) -> str:
    """'diffusers' | 'native' | 'converted' for a release folder or file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DeepGenLoadError(f"{p} does not exist")
    if p.is_file():
        if p.suffix == ".safetensors":
            return "converted"
        if p.suffix in _NATIVE_SUFFIXES:
            return "native"
        raise DeepGenLoadError(f"{p} is not a DeepGen checkpoint: expected model.pt or deepgen_*.safetensors")
    if (p / "model_index.json").is_file() or ((p / "transformer").is_dir() and (p / "connector").is_dir()):
        return "diffusers"
    if (p / "model.pt").is_file() or len(_native_candidates(p)) == 1:
        return "native"
    if any((p / name).is_file() for name in CONVERTED_FILES.values()):
        return "converted"
    raise DeepGenLoadError(
        f"{p} is not a DeepGen 1.0 folder: expected the DeepGen-1.0-diffusers layout (model_index.json, "
        "transformer/, connector/, vlm/ ...), the native model.pt, or deepgen_*.safetensors from deepgen_model.convert")


def _native_candidates(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in _NATIVE_SUFFIXES)


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


def _layout(source, allowed=("diffusers", "native", "converted")) -> str:
    layout = detect_layout(source)
    if layout not in allowed:
        raise DeepGenLoadError(f"{source} is a {layout} checkpoint, which cannot provide this component")
    return layout


# ---------------------------------------------------------------------------------------------------
# Raw readers


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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise DeepGenLoadError(f"{path} could not be read as safetensors: {e}") from e


def safetensors_metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise DeepGenLoadError(f"{path} could not be read as safetensors: {e}") from e


def _stored_dtype(files) -> torch.dtype | None:
    """Most common floating dtype (by element count) recorded in safetensors headers."""
    counts: Counter = Counter()
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for k, v in header.items():
            if k != "__metadata__" and v["dtype"] in _ST_DTYPES:
                n = 1
                for s in v["shape"]:
                    n *= s
                counts[_ST_DTYPES[v["dtype"]]] += n
    return counts.most_common(1)[0][0] if counts else None


def _majority_dtype(state: dict) -> torch.dtype | None:
    counts: Counter = Counter()
    for v in state.values():
        if v.is_floating_point():
            counts[v.dtype] += v.numel()
    return counts.most_common(1)[0][0] if counts else None


def _cast(state: dict, dtype: torch.dtype | None) -> dict:
    """Floating tensors to `dtype` (None: the checkpoint's dominant dtype, so a model is never mixed)."""
    dtype = dtype or _majority_dtype(state)
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def converted_file(source, component: str) -> Path:
    p = Path(source).expanduser()
    if p.is_dir():
        p = p / CONVERTED_FILES[component]
        if not p.is_file():
            raise DeepGenLoadError(f"{p} is missing; run `python -m deepgen_model.convert` to create it")
    return p


def read_converted(source, component: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of one converted file, checking that it holds `component`."""
    path = converted_file(source, component)
    meta = safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise DeepGenLoadError(f"{path} is not a DeepGen converted file (metadata format {meta.get('format')!r}, "
                               f"expected {FORMAT!r}); pass {CONVERTED_FILES[component]} written by deepgen_model.convert")
    if meta.get("component") != component:
        raise DeepGenLoadError(f"{path} holds the DeepGen {meta.get('component')!r} component, not {component!r}; "
                               f"pass {CONVERTED_FILES[component]} (or the folder holding it)")
    return _read_safetensors(path), meta


def _json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DeepGenLoadError(f"{path} could not be read as JSON: {e}") from e


# ---------------------------------------------------------------------------------------------------
# Strict assignment into meta-built modules


def _assign(model: torch.nn.Module, state: dict, source, optional=()) -> torch.nn.Module:
    """load_state_dict(assign=True) after checking names and shapes; errors name every bad key."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                       for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
    problems = [f"{what} ({len(keys)}): {_preview(keys)}"
                for what, keys in (("missing tensors", missing), ("unexpected tensors", unexpected),
                                   ("mis-shaped tensors", misshaped)) if keys]
    if problems:
        raise DeepGenLoadError(f"{source}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False, assign=True)
    return model


def _check_materialised(model: torch.nn.Module, source) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise DeepGenLoadError(f"{source}: tensors left unloaded: {_preview(left)}")


def _preview(names, n: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n} more)" if len(names) > n else "")


def _finish(model, dtype, device):
    if dtype is not None:
        model = model.to(dtype)
    return model.to(torch.device(device)).eval()


# ---------------------------------------------------------------------------------------------------
# Bridge (connector + projectors + think tokens)

_BRIDGE_FAMILIES = ("connector", "projector", "meta_queries")
_BRIDGE_SHAPE_KEYS = ("projector_1.weight", "projector_2.weight", "projector_3.weight", "meta_queries",
                      "connector.layers.0.mlp.fc1.weight")


def load_bridge(source, *, dtype=None, device="cpu", num_attention_heads: int | None = None) -> SCBBridge:
    """SCB bridge from any layout. dtype None keeps the file's dtype (the release's connector is fp32).

    The head count is not visible in tensor shapes: connector/config.json, the converted metadata,
    `num_attention_heads`, or the released default (32), in that order."""
    dtype = parse_dtype(dtype)
    layout = _layout(source)
    if layout == "converted":
        state, meta = read_converted(source, "scb")
        name = converted_file(source, "scb")
        cfg = BridgeConfig.from_dict(json.loads(meta["config"]))
        if num_attention_heads:
            cfg = dataclasses.replace(cfg, num_attention_heads=num_attention_heads)
    else:
        extra = {}
        if layout == "diffusers":
            name = Path(source) / "connector" / "model.safetensors"
            if not name.is_file():
                raise DeepGenLoadError(f"{name} is missing: download the connector/ folder of DeepGen-1.0-diffusers")
            state = _read_safetensors(name)
            cfg_file = name.parent / "config.json"
            if cfg_file.is_file():
                extra = _json_file(cfg_file)
        else:
            name = native_file(source)
            state = {k: v for k, v in load_native_state(name).items() if family(k) in _BRIDGE_FAMILIES}
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
    _assign(bridge, state, name)
    _check_materialised(bridge, name)
    log.info("bridge from %s: %d tensors, %d heads", name, len(state), cfg.num_attention_heads)
    return _finish(bridge, dtype, device)


def _bridge_config(state: dict, name, heads) -> BridgeConfig:
    missing = [k for k in _BRIDGE_SHAPE_KEYS if k not in state]
    if missing:
        raise DeepGenLoadError(f"{name}: missing tensors ({len(missing)}): {_preview(missing)} "
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
    with torch.device("meta"):
        model = cls.from_config(_diffusers_config(config))
    _assign(model, _cast(state, dtype), source)
    _check_materialised(model, source)
    return _finish(model, None, device)


def _from_pretrained_folder(cls, folder: Path, dtype, device):
    weights = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").is_file() or not weights:
        raise DeepGenLoadError(f"{folder} needs config.json and *.safetensors weights")
    dtype = dtype or _stored_dtype(weights)
    try:
        model, info = cls.from_pretrained(str(folder), torch_dtype=dtype, output_loading_info=True)
    except _READ_ERRORS as e:
        raise DeepGenLoadError(f"{folder}: could not load {cls.__name__} from {_names(weights)}: {e}") from e
    _check_loading_info(info, folder, weights)
    _check_materialised(model, folder)
    return _finish(model, None, device)


# what from_pretrained raises for unreadable/truncated files (SafetensorError is no OSError) and for
# tensors left on the meta device (NotImplementedError when moved)
_READ_ERRORS = (OSError, ValueError, RuntimeError, NotImplementedError, SafetensorError)


def _names(files) -> str:
    return ", ".join(Path(f).name for f in files)


def _mismatch(m) -> str:
    """A mismatched_keys entry: (key, file shape, model shape) or just the key, by library version."""
    if isinstance(m, str):
        return m
    m = list(m)
    return f"{m[0]} {tuple(m[1])} (expected {tuple(m[2])})" if len(m) >= 3 else str(m)


def _check_loading_info(info: dict, folder: Path, weights, optional=()) -> None:
    """from_pretrained only warns about missing tensors (and re-initialises them at random): refuse."""
    missing = sorted(k for k in info.get("missing_keys", []) if k not in optional)
    mismatched = sorted(_mismatch(m) for m in info.get("mismatched_keys", []))
    problems = [f"{what} ({len(keys)}): {_preview(keys)}"
                for what, keys in (("missing tensors", missing), ("mis-shaped tensors", mismatched)) if keys]
    if problems:
        raise DeepGenLoadError(f"{folder} ({_names(weights)}): " + "; ".join(problems)
                               + "; the files are incomplete or from another model: download them again")


def load_dit(source, *, base_path=None, dtype=None, device="cpu"):
    """SD3Transformer2DModel (diffusers key names). Native: every transformer.* tensor of model.pt is
    required (the DiT was fine-tuned); only the architecture comes from base_path (or the built-in
    SD3.5-M config when no UniPic2 folder is given)."""
    from diffusers import SD3Transformer2DModel

    dtype = parse_dtype(dtype)
    layout = _layout(source)
    if layout == "diffusers":
        return _from_pretrained_folder(SD3Transformer2DModel, Path(source) / "transformer", dtype, device)
    if layout == "converted":
        state, meta = read_converted(source, "dit")
        return _build_diffusers(SD3Transformer2DModel, json.loads(meta["config"]), state,
                                converted_file(source, "dit"), dtype, device)
    name = native_file(source)
    state = {k[len("transformer."):]: v for k, v in load_native_state(name).items() if k.startswith("transformer.")}
    if base_path is not None:
        cfg_file = Path(base_path) / "transformer" / "config.json"
        if not cfg_file.is_file():
            raise DeepGenLoadError(f"{cfg_file} is missing: base_path must be {UNIPIC2_HINT}")
        config = _json_file(cfg_file)
    else:
        log.info("%s: no base_path; using the built-in SD3.5-M Kontext DiT config", name)
        config = configs.get("dit")
    return _build_diffusers(SD3Transformer2DModel, config, state, f"{name} (transformer.*)", dtype, device)


def load_vae(source, *, base_path=None, dtype=None, device="cpu"):
    """AutoencoderKL: the release's vae/, base_path's vae/ (native), or deepgen_vae.safetensors."""
    from diffusers import AutoencoderKL

    dtype = parse_dtype(dtype)
    layout = _layout(source)
    if layout == "converted":
        state, meta = read_converted(source, "vae")
        return _build_diffusers(AutoencoderKL, json.loads(meta["config"]), state,
                                converted_file(source, "vae"), dtype, device)
    roots = ([Path(source)] if layout == "diffusers" else []) + ([Path(base_path)] if base_path else [])
    for root in roots:
        if (root / "vae" / "config.json").is_file():
            return _from_pretrained_folder(AutoencoderKL, root / "vae", dtype, device)
    raise DeepGenLoadError(f"no vae/ folder found for {source}: the native model.pt has no VAE; "
                           f"pass base_path= {UNIPIC2_HINT}")


def load_scheduler_config(source, *, base_path=None) -> dict:
    """The release's (or base_path's) scheduler_config.json; else the SD3 default (shift 3.0), logged."""
    layout = detect_layout(source)
    roots = ([Path(source)] if layout == "diffusers" else []) + ([Path(base_path)] if base_path else [])
    for root in roots:
        f = root / "scheduler" / "scheduler_config.json"
        if f.is_file():
            return _json_file(f)
    if layout == "converted":
        meta = safetensors_metadata(converted_file(source, "dit"))
        if "scheduler_config" in meta:
            return json.loads(meta["scheduler_config"])
    log.warning("%s: no scheduler_config.json; using FlowMatchEuler shift 3.0 (spec §1.7)", source)
    return configs.get("scheduler")


# ---------------------------------------------------------------------------------------------------
# VLM (Qwen2.5-VL-3B) and tokenizer


def load_vlm(source, *, base_vlm_path=None, dtype=None, device="cpu", attn_implementation="sdpa",
             quantization=None):
    """(Qwen2_5_VLForConditionalGeneration, tokenizer) for any layout.

    diffusers: vlm/ as-is (LoRA already merged). native: base_vlm_path + the LoRA in model.pt (stock
    weights, with a warning, when model.pt has none). converted: deepgen_vlm.safetensors."""
    dtype = parse_dtype(dtype)
    attn = check_attn_implementation(attn_implementation)
    default_storage, default_compute = resolve_dtypes(device, stage="vlm")
    quant = quantization_config(quantization, default_compute if dtype in (None, default_storage) else dtype)
    opts = dict(dtype=dtype, device=device, attn=attn, quant=quant)
    layout = _layout(source)
    if layout == "converted":
        state, meta = read_converted(source, "vlm")
        name = converted_file(source, "vlm")
        model = _vlm_from_state(json.loads(meta["config"]), state, name, **opts)
        return model, _tokenizer_from_files(json.loads(meta["tokenizer_files"]), name)
    base = Path(base_vlm_path) if base_vlm_path else None
    if base is not None and not (base / "config.json").is_file():
        raise DeepGenLoadError(f"base_vlm_path {base} has no config.json: it must be {QWEN_HINT}")
    if layout == "diffusers":
        root = Path(source)
        if (root / "vlm" / "config.json").is_file():
            model = _vlm_from_pretrained(root / "vlm", **opts)
        elif base is not None:
            log.warning("%s has no vlm/ folder; using the stock Qwen2.5-VL weights of %s WITHOUT the DeepGen "
                        "LoRA (outputs will differ from the release)", root, base)
            model = _vlm_from_pretrained(base, **opts)
        else:
            raise DeepGenLoadError(f"{root} has no vlm/ folder (an early DeepGen-1.0-diffusers revision): download "
                                   f"the release's vlm/ folder, or pass base_vlm_path= {QWEN_HINT}")
        return model, load_tokenizer(root / "tokenizer", root / "vlm", base)
    name = native_file(source)
    if base is None:
        raise DeepGenLoadError(f"{name} does not contain the VLM: pass base_vlm_path= {QWEN_HINT}")
    lora, _ = split_lora(load_native_state(name))
    if lora:
        state = merge_lora_into_state(read_hf_weights(base), lora, source=str(name))
        model = _vlm_from_state(_json_file(base / "config.json"), state, base, **opts)
    else:
        log.warning("%s has no VLM LoRA tensors; using stock Qwen2.5-VL weights from %s", name, base)
        model = _vlm_from_pretrained(base, **opts)
    return model, load_tokenizer(base)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise DeepGenLoadError(f"{folder} has no *.safetensors weights: it must be {QWEN_HINT}")
    state = {}
    for f in files:
        state.update(_read_safetensors(f))
    return state


def check_attn_implementation(attn: str) -> str:
    if attn not in ATTN_IMPLEMENTATIONS:
        raise DeepGenLoadError(f"attn_implementation {attn!r} is not supported; use one of {ATTN_IMPLEMENTATIONS}")
    if attn == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except Exception as e:
            raise DeepGenLoadError(
                f"attn_implementation='flash_attention_2' needs the flash-attn package ({e}); install it with "
                "`pip install flash-attn --no-build-isolation` (CUDA only) or use attn_implementation='sdpa'") from e
    return attn


def quantization_config(quantization, compute_dtype=None):
    """transformers BitsAndBytesConfig for '8bit' / 'nf4'; bitsandbytes is imported only here."""
    if quantization in (None, "", "none", False):
        return None
    q = str(quantization).lower()
    if q not in QUANTIZATIONS:
        raise DeepGenLoadError(f"quantization {quantization!r} is not supported; use None, '8bit' or 'nf4'")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:
        raise DeepGenLoadError(f"quantization={q!r} needs bitsandbytes ({e}); install it with "
                               "`pip install bitsandbytes` or load without quantization") from e
    from transformers import BitsAndBytesConfig

    if q == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=compute_dtype or torch.float32)


def _dtype_kw(dtype) -> dict:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def _quant_kwargs(quant, device) -> dict:
    return {} if quant is None else {"quantization_config": quant, "device_map": {"": str(torch.device(device))}}


def _vlm_from_pretrained(folder: Path, *, dtype, device, attn, quant):
    from transformers import Qwen2_5_VLForConditionalGeneration

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise DeepGenLoadError(f"{folder} has no *.safetensors weights")
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(folder), attn_implementation=attn, **_dtype_kw(dtype or _stored_dtype(weights)),
            output_loading_info=True, ignore_mismatched_sizes=True, **_quant_kwargs(quant, device))
    except _READ_ERRORS as e:
        raise DeepGenLoadError(f"{folder}: could not load Qwen2.5-VL from {_names(weights)}: {e}") from e
    # mis-shaped tensors are only re-initialised (ignore_mismatched_sizes) so that they can be named here
    _check_loading_info(info, folder, weights, optional=("lm_head.weight",))
    _tie_lm_head(model)
    if quant is None:
        _check_materialised(model, folder)  # transformers 4.x may leave a missing tensor on meta, unreported
    return model.eval() if quant is not None else _finish(model, None, device)


def _vlm_from_state(config: dict, state: dict, source, *, dtype, device, attn, quant):
    """Build on meta and assign `state` (legacy or runtime names); tied lm_head re-tied."""
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if config.get("model_type") != "qwen2_5_vl":
        raise DeepGenLoadError(f"{source}: config model_type {config.get('model_type')!r} is not qwen2_5_vl")
    cfg = Qwen2_5_VLConfig.from_dict(config)
    with init_empty_weights():  # parameters on meta; rotary buffers stay real
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation=attn)
    runtime = model.state_dict()
    state, unknown = normalize_vlm_keys(_cast(state, dtype), runtime)
    if unknown:
        raise DeepGenLoadError(f"{source}: {len(unknown)} tensors are not Qwen2.5-VL weights: {_preview(unknown)}")
    if quant is not None:
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                None, config=cfg, state_dict=state, attn_implementation=attn,
                **_dtype_kw(_majority_dtype(state)), **_quant_kwargs(quant, device))
        except (OSError, ValueError, RuntimeError) as e:
            raise DeepGenLoadError(f"{source}: could not quantize Qwen2.5-VL: {e}") from e
        _tie_lm_head(model)
        return model.eval()
    _assign(model, state, source, optional=("lm_head.weight",))
    _tie_lm_head(model)
    _check_materialised(model, source)
    return _finish(model, None, device)


def _tie_lm_head(model) -> None:
    """The release drops the tied lm_head on save; point it back at the input embedding (never used)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight.is_meta and tuple(head.weight.shape) == tuple(emb.weight.shape):
        head.weight = emb.weight


def load_tokenizer(*folders):
    """AutoTokenizer from the first folder that has tokenizer files."""
    from transformers import AutoTokenizer

    for folder in folders:
        if folder is not None and any((Path(folder) / f).is_file() for f in TOKENIZER_FILES[:3]):
            try:
                return AutoTokenizer.from_pretrained(str(folder))
            except (OSError, ValueError, TypeError, AttributeError) as e:
                raise DeepGenLoadError(f"{folder}: could not load the tokenizer: {e}") from e
    raise DeepGenLoadError(f"no tokenizer files in {[str(f) for f in folders if f]}: need the release's tokenizer/ "
                           f"folder or {QWEN_HINT}")


def tokenizer_files_of(folder) -> dict[str, str]:
    """The tokenizer files of a folder, verbatim (embedded in deepgen_vlm.safetensors)."""
    return {f: (Path(folder) / f).read_text(encoding="utf-8") for f in TOKENIZER_FILES if (Path(folder) / f).is_file()}


def _tokenizer_from_files(files: dict[str, str], source):
    if not files:
        raise DeepGenLoadError(f"{source} has no embedded tokenizer files; re-run deepgen_model.convert")
    with tempfile.TemporaryDirectory(prefix="deepgen_tok_") as d:
        for name, text in files.items():
            if Path(name).name != name:
                raise DeepGenLoadError(f"{source}: bad embedded tokenizer file name {name!r}")
            (Path(d) / name).write_text(text, encoding="utf-8")
        return load_tokenizer(Path(d))


def vlm_assets(source, base_vlm_path=None) -> tuple[dict, dict[str, str]]:
    """(hub-format config dict, tokenizer files) of the VLM a source resolves to (used by the converter,
    which copies them verbatim so the converted file loads in transformers 4.x and 5.x alike)."""
    layout = _layout(source)
    if layout == "converted":
        meta = read_converted(source, "vlm")[1]
        return json.loads(meta["config"]), json.loads(meta["tokenizer_files"])
    base = Path(base_vlm_path) if base_vlm_path else None
    if layout == "diffusers":
        root = Path(source)
        cfg_dir = root / "vlm" if (root / "vlm" / "config.json").is_file() else base
        tok_dirs = [root / "tokenizer", root / "vlm", base]
    else:
        cfg_dir, tok_dirs = base, [base]
    if cfg_dir is None:
        raise DeepGenLoadError(f"{source}: no VLM config; pass base_vlm_path= {QWEN_HINT}")
    for d in tok_dirs:
        if d is not None and (files := tokenizer_files_of(d)):
            return _json_file(cfg_dir / "config.json"), files
    raise DeepGenLoadError(f"{source}: no tokenizer files found; pass base_vlm_path= {QWEN_HINT}")


def vlm_legacy_state(vlm) -> dict[str, torch.Tensor]:
    """The VLM's tensors under the legacy on-disk names, a tied lm_head dropped (as the release's vlm/)."""
    state = vlm.state_dict()
    head = vlm.get_output_embeddings()
    tied = head is not None and head.weight is vlm.get_input_embeddings().weight
    return {to_legacy(k): v for k, v in state.items() if not (tied and k == "lm_head.weight")}


__all__ = ["detect_layout", "load_vlm", "load_bridge", "load_dit", "load_vae", "load_scheduler_config",
           "load_native_state", "load_tokenizer", "read_converted", "vlm_assets", "vlm_legacy_state",
           "FORMAT", "CONVERTED_FILES"]
