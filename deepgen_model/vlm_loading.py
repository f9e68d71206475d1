"""Builder of the VLM (Qwen2.5-VL-3B with DeepGen's LoRA merged) and its tokenizer, from a Release.

diffusers: the release's vlm/ and tokenizer/; native: the vlm_base folder with model.pt's LoRA merged
in (deepgen_model/lora.py); converted: deepgen_vlm.safetensors with its embedded config and tokenizer.
bitsandbytes (8-bit / NF4) is imported only when quantization asks for it.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from . import validation
from .assign import READ_ERRORS, assign, check_loading_info, check_materialised, file_names, finish, preview
from .errors import DeepGenLoadError
from .keys import normalize_vlm_keys, to_legacy
from .lora import merge_lora_into_state, split_lora
from .precision import cast_floating, dominant_dtype, parse_dtype, resolve_dtypes
from .release import (QWEN_HINT, TOKENIZER_FILES, Release, json_file, read_safetensors, safetensors_metadata,
                      stored_dtype)

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
QUANTIZATIONS = ("8bit", "nf4")


def load_vlm(release, *, base_vlm_path=None, dtype=None, device="cpu", attn_implementation="sdpa",
             quantization=None):
    """(Qwen2_5_VLForConditionalGeneration, tokenizer) of a Release (or a path + base_vlm_path).

    diffusers: vlm/ as-is (LoRA already merged). native: the vlm_base + the LoRA in model.pt (stock
    weights, with a warning, when model.pt has none). converted: deepgen_vlm.safetensors."""
    dtype = parse_dtype(dtype)
    attn = check_attn_implementation(attn_implementation)
    default_storage, default_compute = resolve_dtypes(device, stage="vlm")
    quant = quantization_config(quantization, default_compute if dtype in (None, default_storage) else dtype)
    opts = dict(dtype=dtype, device=device, attn=attn, quant=quant)
    release = Release.of(release, vlm_base=base_vlm_path)
    layout = release.layout
    if layout == "converted":
        state, meta = release.read_converted("vlm")
        name = release.converted_file("vlm")
        model = _vlm_from_state(json.loads(meta["config"]), state, name, **opts)
        return model, _tokenizer_from_files(json.loads(meta["tokenizer_files"]), name)
    base = release.vlm_base
    if layout == "diffusers":
        root = release.path
        if (root / "vlm" / "config.json").is_file():
            model = _vlm_from_pretrained(root / "vlm", **opts)
        elif base is not None:
            log.warning("%s has no vlm/ folder; using the stock Qwen2.5-VL weights of %s WITHOUT the DeepGen "
                        "LoRA (outputs will differ from the release)", root, base)
            model = _vlm_from_pretrained(base, **opts)
        else:
            raise DeepGenLoadError(f"{root} has no vlm/ folder (an early DeepGen-1.0-diffusers revision): download "
                                   f"the release's vlm/ folder, or pass base_vlm_path= {QWEN_HINT}")
        return model, load_release_tokenizer(release)
    name = release.native_file()
    if base is None:
        raise DeepGenLoadError(f"{name} does not contain the VLM: pass base_vlm_path= {QWEN_HINT}")
    lora, _ = split_lora(release.native_state())
    if lora:
        state = merge_lora_into_state(read_hf_weights(base), lora, source=str(name))
        model = _vlm_from_state(json_file(base / "config.json", "VLM"), state, base, **opts)
    else:
        log.warning("%s has no VLM LoRA tensors; using stock Qwen2.5-VL weights from %s", name, base)
        model = _vlm_from_pretrained(base, **opts)
    return model, load_release_tokenizer(release)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise DeepGenLoadError(f"{folder} has no *.safetensors weights: it must be {QWEN_HINT}")
    state = {}
    for f in files:
        state.update(read_safetensors(f, "VLM"))
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
    validation.check_folder(folder, "VLM")
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(folder), attn_implementation=attn, **_dtype_kw(dtype or stored_dtype(weights)),
            output_loading_info=True, ignore_mismatched_sizes=True, **_quant_kwargs(quant, device))
    except READ_ERRORS as e:
        raise DeepGenLoadError(f"{folder}: could not load Qwen2.5-VL from {file_names(weights)}: {e}") from e
    # mis-shaped tensors are only re-initialised (ignore_mismatched_sizes) so that they can be named here
    check_loading_info(info, folder, weights, optional=("lm_head.weight",))
    _tie_lm_head(model)
    if quant is None:
        check_materialised(model, folder)  # transformers 4.x may leave a missing tensor on meta, unreported
    return model.eval() if quant is not None else finish(model, None, device)


def _vlm_from_state(config: dict, state: dict, source, *, dtype, device, attn, quant):
    """Build on meta and assign `state` (legacy or runtime names); tied lm_head re-tied."""
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    validation.check_tensors(state, validation.check_config(config, "VLM", source), "VLM", source)
    if config.get("model_type") != "qwen2_5_vl":
        raise DeepGenLoadError(f"{source}: config model_type {config.get('model_type')!r} is not qwen2_5_vl")
    cfg = Qwen2_5_VLConfig.from_dict(config)
    with init_empty_weights():  # parameters on meta; rotary buffers stay real
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation=attn)
    runtime = model.state_dict()
    state, unknown = normalize_vlm_keys(cast_floating(state, dtype), runtime)
    if unknown:
        raise DeepGenLoadError(f"{source}: {len(unknown)} tensors are not Qwen2.5-VL weights: {preview(unknown)}")
    if quant is not None:
        try:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                None, config=cfg, state_dict=state, attn_implementation=attn,
                **_dtype_kw(dominant_dtype(state)), **_quant_kwargs(quant, device))
        except (OSError, ValueError, RuntimeError) as e:
            raise DeepGenLoadError(f"{source}: could not quantize Qwen2.5-VL: {e}") from e
        _tie_lm_head(model)
        return model.eval()
    assign(model, state, source, optional=("lm_head.weight",))
    _tie_lm_head(model)
    check_materialised(model, source)
    return finish(model, None, device)


def _tie_lm_head(model) -> None:
    """The release drops the tied lm_head on save; point it back at the input embedding (never used)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight.is_meta and tuple(head.weight.shape) == tuple(emb.weight.shape):
        head.weight = emb.weight


def load_tokenizer(*folders):
    """AutoTokenizer from the first folder that has tokenizer files."""
    from transformers import AutoTokenizer

    for folder in folders:
        if folder is not None and any((Path(folder) / f).exists() for f in TOKENIZER_FILES[:3]):
            validation.check_tokenizer(folder)
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
    validation.check_tokenizer(files, source)
    with tempfile.TemporaryDirectory(prefix="deepgen_tok_") as d:
        for name, text in files.items():
            if Path(name).name != name:
                raise DeepGenLoadError(f"{source}: bad embedded tokenizer file name {name!r}")
            (Path(d) / name).write_text(text, encoding="utf-8")
        return load_tokenizer(Path(d))


def load_release_tokenizer(release):
    """The tokenizer of a release's VLM: embedded in a converted file, else in the release's folders."""
    release = Release.of(release)
    if release.layout == "converted":
        name = release.converted_file("vlm")
        meta = safetensors_metadata(name, "VLM")
        if "tokenizer_files" not in meta:
            return _tokenizer_from_files({}, name)  # names the file and the fix
        validation.check_metadata(meta, "vlm", name)  # the embedded JSON, before it is parsed here
        return _tokenizer_from_files(json.loads(meta["tokenizer_files"]), name)
    return load_tokenizer(*release.tokenizer_dirs())


def vlm_assets(release, base_vlm_path=None) -> tuple[dict, dict[str, str]]:
    """(hub-format config dict, tokenizer files) of the VLM a release resolves to (used by the converter,
    which copies them verbatim so the converted file loads in transformers 4.x and 5.x alike)."""
    release = Release.of(release, vlm_base=base_vlm_path)
    if release.layout == "converted":
        meta = release.read_converted("vlm")[1]
        return json.loads(meta["config"]), json.loads(meta["tokenizer_files"])
    base = release.vlm_base
    if release.layout == "diffusers":
        root = release.path
        cfg_dir = root / "vlm" if (root / "vlm" / "config.json").is_file() else base
    else:
        cfg_dir = base
    if cfg_dir is None:
        raise DeepGenLoadError(f"{release}: no VLM config; pass base_vlm_path= {QWEN_HINT}")
    for d in release.tokenizer_dirs():
        if files := tokenizer_files_of(d):
            return json_file(cfg_dir / "config.json", "VLM"), files
    raise DeepGenLoadError(f"{release}: no tokenizer files found; pass base_vlm_path= {QWEN_HINT}")


def vlm_legacy_state(vlm) -> dict[str, torch.Tensor]:
    """The VLM's tensors under the legacy on-disk names, a tied lm_head dropped (as the release's vlm/)."""
    state = vlm.state_dict()
    head = vlm.get_output_embeddings()
    tied = head is not None and head.weight is vlm.get_input_embeddings().weight
    return {to_legacy(k): v for k, v in state.items() if not (tied and k == "lm_head.weight")}


__all__ = ["load_vlm", "load_tokenizer", "load_release_tokenizer", "vlm_assets", "vlm_legacy_state"]
