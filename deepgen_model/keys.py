"""Checkpoint key families (for load-time logging) and Qwen2.5-VL key-name normalisation.

On disk (hub files, the release's vlm/, our converted file) the VLM uses the legacy names
`model.layers.*`, `model.embed_tokens.*`, `model.norm.*`, `visual.*`, `lm_head.*`. At runtime
transformers >= 4.52 names them `model.language_model.*` / `model.visual.*`, 4.51 keeps the legacy
names (docs/inference.md#pitfall-8). Rather than testing versions, every name is reduced to its legacy form and matched
against the legacy form of the instantiated model's own keys.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

FAMILIES = ("transformer", "connector", "projector", "meta_queries", "lora", "vlm", "other")
LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B")
_RUNTIME_TO_LEGACY = (("model.language_model.", "model."), ("model.visual.", "visual."))
_VLM_PREFIXES = ("lmm.", "model.", "visual.", "lm_head.")


def is_lora_key(key: str) -> bool:
    return any(m in key for m in LORA_MARKERS)


def family(key: str) -> str:
    if is_lora_key(key):
        return "lora"
    if key.startswith("transformer."):
        return "transformer"
    if key.startswith("connector."):
        return "connector"
    if key.startswith("projector_"):
        return "projector"
    if key == "meta_queries":
        return "meta_queries"
    if key.startswith(_VLM_PREFIXES):
        return "vlm"
    return "other"


def count_families(keys: Iterable[str]) -> dict[str, int]:
    counts = Counter(family(k) for k in keys)
    return {f: counts.get(f, 0) for f in FAMILIES}


def describe_families(keys: Iterable[str]) -> str:
    """e.g. 'transformer=909 connector=96 projector=6 meta_queries=1 lora=832 vlm=0 other=0'."""
    return " ".join(f"{f}={n}" for f, n in count_families(keys).items())


def to_legacy(key: str) -> str:
    """Any Qwen2.5-VL key (runtime >= 4.52 or legacy) -> its legacy on-disk name."""
    for new, old in _RUNTIME_TO_LEGACY:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def runtime_key_map(runtime_keys: Iterable[str]) -> dict[str, str]:
    """legacy name -> the instantiated model's own name (whatever the installed transformers uses)."""
    return {to_legacy(k): k for k in runtime_keys}


def normalize_vlm_keys(state: dict, runtime_keys: Iterable[str]) -> tuple[dict, list[str]]:
    """Rename a VLM state dict (legacy or runtime names) to the model's names.

    Returns (renamed state, keys that match nothing in the model)."""
    mapping = runtime_key_map(runtime_keys)
    out, unknown = {}, []
    for k, v in state.items():
        target = mapping.get(to_legacy(k))
        if target is None:
            unknown.append(k)
        else:
            out[target] = v
    return out, unknown
