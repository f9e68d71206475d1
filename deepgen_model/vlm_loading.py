"""Builder of the VLM (Qwen2.5-VL-3B with DeepGen's LoRA merged) and its tokenizer, from a Release.

The Release says where they are (Release.vlm_part: a folder, or tensors + config with model.pt's LoRA
already merged; Release.tokenizer_sources: folders, or deepgen_vlm.safetensors that embeds the files).
bitsandbytes (8-bit / NF4) is imported only when quantization asks for it.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from . import validation
from .assign import assign, check_materialised, finish, preview
from .errors import DeepGenLoadError
from .keys import normalize_vlm_keys, to_legacy
from .precision import cast_floating, dominant_dtype, parse_dtype, resolve_dtypes
from .release import QWEN_HINT, TOKENIZER_FILES, Release, read_tokenizer_files

log = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
QUANTIZATIONS = ("8bit", "nf4")


def load_vlm(release, *, dtype=None, device="cpu", attn_implementation="sdpa",
             quantization=None):
    """(Qwen2_5_VLForConditionalGeneration, tokenizer) of a Release (or a path; Release.open(path, vlm_base=) for the native model.pt).

    The weights are those of Release.vlm_part; the tokenizer that of load_release_tokenizer."""
    dtype = parse_dtype(dtype)
    attn = check_attn_implementation(attn_implementation)
    default_storage, default_compute = resolve_dtypes(device, stage="vlm")
    quant = quantization_config(quantization, default_compute if dtype in (None, default_storage) else dtype)
    opts = dict(dtype=dtype, device=device, attn=attn, quant=quant)
    release = Release.of(release)
    part = release.vlm_part()
    model = _vlm_from_state(part.config, part.tensors, part.name, **opts)
    tokenizer = load_release_tokenizer(release)
    config_file = Path(part.name) / "config.json" if Path(part.name).is_dir() else part.name
    validation.check_token_ids(model.config, tokenizer, config_file)
    return model, tokenizer


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


def _vlm_from_state(config: dict, state: dict, source, *, dtype, device, attn, quant):
    """Build on meta and assign `state` (legacy or runtime names); tied lm_head re-tied."""
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

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


def load_tokenizer(*sources):
    """AutoTokenizer of the first source that has tokenizer files: a folder, or deepgen_vlm.safetensors
    (the files it embeds)."""
    from transformers import AutoTokenizer

    for source in (Path(s) for s in sources if s is not None):
        if source.is_file():
            return _tokenizer_from_files(read_tokenizer_files(source), source)
        if any((source / f).exists() for f in TOKENIZER_FILES[:3]):
            validation.check_tokenizer(source)
            try:
                return AutoTokenizer.from_pretrained(str(source))
            except (OSError, ValueError, TypeError, AttributeError) as e:
                raise DeepGenLoadError(f"{source}: could not load the tokenizer: {e}") from e
    raise DeepGenLoadError(f"no tokenizer files in {[str(s) for s in sources if s]}: need the release's tokenizer/ "
                           f"folder or {QWEN_HINT}")


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
    """The tokenizer of a release's VLM (Release.tokenizer_sources)."""
    return load_tokenizer(*Release.of(release).tokenizer_sources())


def vlm_legacy_state(vlm) -> dict[str, torch.Tensor]:
    """The VLM's tensors under the legacy on-disk names, a tied lm_head dropped (as the release's vlm/)."""
    state = vlm.state_dict()
    head = vlm.get_output_embeddings()
    tied = head is not None and head.weight is vlm.get_input_embeddings().weight
    return {to_legacy(k): v for k, v in state.items() if not (tied and k == "lm_head.weight")}


__all__ = ["load_vlm", "load_tokenizer", "load_release_tokenizer", "vlm_legacy_state"]
