"""Merging the VLM LoRA of a native `model.pt` into Qwen2.5-VL weights (docs/inference.md#vlm-lora, #pitfall-17, #pitfall-18).

PEFT names: `lmm.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight` (>= 4.52)
or `lmm.model.layers...` / `lmm.visual...` (4.51); embeddings use `lora_embedding_{A,B}.default`.
Merge (scale = alpha / r = 2.0): Linear W += s * B @ A; Embedding E += s * (B @ A)^T.
The lm_head LoRA is skipped: logits are unused and the head shares storage with the input embedding.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .constants import LORA_SCALE
from .errors import DeepGenLoadError
from .keys import is_lora_key, runtime_key_map, to_legacy

log = logging.getLogger(__name__)

_KINDS = {"A": ("A", False), "B": ("B", False), "embedding_A": ("A", True), "embedding_B": ("B", True)}


@dataclass
class LoraPair:
    module: str  # legacy module name, e.g. model.layers.0.self_attn.q_proj / model.embed_tokens / visual.merger.mlp.0
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    embedding: bool = False


def split_lora(state: dict) -> tuple[dict, dict]:
    """(LoRA tensors, everything else)."""
    lora = {k: v for k, v in state.items() if is_lora_key(k)}
    return lora, {k: v for k, v in state.items() if k not in lora}


def normalize_lora_key(key: str) -> tuple[str, str, bool]:
    """PEFT LoRA key -> (legacy module name, "A" | "B", is_embedding)."""
    name = key
    while name.startswith("module."):
        name = name[len("module."):]
    if name.startswith("lmm."):
        name = name[len("lmm."):]
    module, sep, rest = name.partition(".lora_")
    if not sep:
        raise DeepGenLoadError(f"{key!r} is not a LoRA tensor name")
    parts = rest.split(".")
    if parts[0] not in _KINDS:
        raise DeepGenLoadError(f"LoRA tensor {key!r}: unknown part 'lora_{parts[0]}'")
    adapter = [p for p in parts[1:] if p not in ("default", "weight")]
    if adapter:
        raise DeepGenLoadError(f"LoRA tensor {key!r} belongs to adapter {adapter[0]!r}; only the 'default' "
                               "adapter of the DeepGen checkpoint is supported")
    part, embedding = _KINDS[parts[0]]
    return to_legacy(module.replace(".base_layer", "")), part, embedding


def group_lora(lora: dict, source: str = "LoRA") -> dict[str, LoraPair]:
    pairs: dict[str, LoraPair] = {}
    for key, t in lora.items():
        module, part, embedding = normalize_lora_key(key)
        pair = pairs.setdefault(module, LoraPair(module, embedding=embedding))
        setattr(pair, part.lower(), t)
    incomplete = sorted(m for m, p in pairs.items() if p.a is None or p.b is None)
    if incomplete:
        raise DeepGenLoadError(f"{source}: LoRA modules without both A and B tensors: {_preview(incomplete)}")
    return pairs


def iter_merged(weights: dict, lora: dict, *, scale: float = LORA_SCALE, source: str = "LoRA", in_place=False):
    """Yield (weight key, merged tensor) one module at a time for `weights` (legacy or runtime names).

    Every target is checked before the first merge, so a bad LoRA fails before anything changes. The
    delta is formed and added in fp32, then cast back to the weight's dtype. The weights are modified only
    `in_place` (they may be read-only mmaps otherwise)."""
    pairs = group_lora(lora, source)
    key_of = runtime_key_map(weights)
    if pairs.pop("lm_head", None) is not None:
        log.info("%s: skipped the lm_head LoRA (unused logits; the head is tied to the input embedding)", source)
    unmatched = sorted(m for m in pairs if m + ".weight" not in key_of)
    if unmatched:
        raise DeepGenLoadError(f"{source}: {len(unmatched)} LoRA target(s) match no Qwen2.5-VL weight: "
                               f"{_preview(unmatched)}. Is the base VLM folder Qwen2.5-VL-3B-Instruct?")
    for module, pair in sorted(pairs.items()):
        key = key_of[module + ".weight"]
        w = weights[key]
        out_in = (pair.b.shape[0], pair.a.shape[1])
        if pair.embedding:
            out_in = out_in[::-1]
        if w.ndim != 2 or tuple(w.shape) != out_in or pair.a.shape[0] != pair.b.shape[1]:
            raise DeepGenLoadError(f"{source}: LoRA for {module} gives a {out_in} update but the weight "
                                   f"{key} is {tuple(w.shape)}; the LoRA does not belong to this Qwen2.5-VL model")
    for module, pair in sorted(pairs.items()):
        key = key_of[module + ".weight"]
        w = weights[key]
        yield key, _merged(w, pair, scale, out=w if in_place else torch.empty_like(w))
    log.info("%s: merged %d LoRA modules (scale %.1f)", source, len(pairs), scale)


# rows merged at a time: whole-matrix fp32 temporaries of the 151,936-row embedding would be ~3.5 GiB (three fp32
# copies), a block of rows is a few MiB; each element is computed exactly as in the whole-matrix formula
MERGE_ROWS = 4096


def _merged(w: torch.Tensor, pair: LoraPair, scale: float, out: torch.Tensor) -> torch.Tensor:
    """W + scale * B @ A (an embedding: W + scale * (B @ A)^T) into `out` (W itself will do: each block of rows is
    read before it is written), formed in fp32 a block of rows at a time, in W's dtype."""
    a, b = pair.a.float(), pair.b.float()
    for start in range(0, w.shape[0], MERGE_ROWS):
        rows = slice(start, start + MERGE_ROWS)
        delta = (b @ a[:, rows]).T if pair.embedding else b[rows] @ a
        out[rows] = (w[rows].float() + scale * delta).to(w.dtype)
    return out


def merge_lora_into_state(state: dict, lora: dict, *, scale: float = LORA_SCALE, source: str = "LoRA") -> dict:
    """Merge into the tensors of `state` in place: they must be writable and `state`'s own (release.read_hf_weights),
    so that the merged VLM costs no more memory than the unmerged one."""
    for _ in iter_merged(state, lora, scale=scale, source=source, in_place=True):
        pass
    return state


def _preview(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" ... (+{len(names) - n} more)" if len(names) > n else "")
