"""Storage vs compute dtypes, and the CPU compute-dtype policy (docs/performance.md, "CPU compute dtype").

Weights are stored in bf16 on a CPU (half the RAM of fp32). Which dtype each stage COMPUTES in depends
on the CPU, from measurement (bench/dtypes.py): without native bf16 (no AVX512-BF16/AMX) bf16 matmuls
are ~7x slower than fp32, so every layer computes in fp32 ("manual cast": weights are cast per call,
the stored tensors never change); with native bf16 they are several times faster than fp32, and the
stages in CPU_BF16_STAGES compute in bf16 (the released model's own precision), the others in fp32.

Which layers follow a compute dtype (is_cast_layer, casts_weights, cast_input) and how to ask what a model
computes in (compute_dtype_of) are written here once: the engine's manual cast below applies them, and so do
the nodes' comfy.ops layers (nodes/comfy_ops.py).
"""
from __future__ import annotations

import functools
import types

import torch
from torch import nn

from .errors import DeepGenInputError

_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
# The weight_dtype widget values of the loader nodes ("auto": the device's default, see resolve_dtypes); the
# DiT loader adds the fp8 storage of FP8_DTYPES.
PRECISIONS = ["auto", "bf16", "fp16", "fp32"]


def parse_dtype(dtype) -> torch.dtype | None:
    """torch.dtype, 'bf16'/'fp16'/'fp32' (and long names), or None/'auto' -> None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in ("auto", "default", ""):
            return None
        if key in _NAMES:
            return _NAMES[key]
    raise DeepGenInputError(f"dtype {dtype!r} is not supported; use 'bf16', 'fp16', 'fp32' or None")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# Stages that compute in bf16 on a CPU with native bf16: each was measured faster in bf16 than in fp32
# with a difference to fp32 within CPU_BF16_MAX_REL_RMS on its own output (bench/dtypes.py,
# docs/performance.md §2). The VLM is 2.7x faster in bf16 but its hidden states moved 6.2 %: fp32.
STAGES = ("vlm", "scb", "dit", "vae")
CPU_BF16_STAGES = frozenset({"scb", "dit", "vae"})
CPU_BF16_MAX_REL_RMS = 0.02


def cpu_compute_dtype(stage: str | None = None) -> torch.dtype:
    """The dtype `stage` ("vlm", "scb", "dit", "vae") computes in on this CPU; None: bf16 wherever
    the CPU has native bf16 (a caller that is no single stage)."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
    if cpu_has_native_bf16() and (stage is None or stage in CPU_BF16_STAGES):
        return torch.bfloat16
    return torch.float32


def resolve_dtypes(device, dtype=None, stage: str | None = None) -> tuple[torch.dtype, torch.dtype]:
    """-> (storage dtype, compute dtype) of `stage` on `device`. An explicit dtype is used for both."""
    explicit = parse_dtype(dtype)
    if explicit is not None:
        return explicit, explicit
    kind = torch.device(device).type
    if kind == "cuda":
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return half, half
    if kind == "cpu":
        return torch.bfloat16, cpu_compute_dtype(stage)
    if kind == "mps":
        return torch.float16, torch.float16
    return torch.float32, torch.float32


# The layers that compute in their stage's compute dtype when their weights are stored in another: the ones
# holding every DeepGen model's matrices and norms, plus every RMSNorm (no common base class: each library has
# its own). Their weights are cast per call; the stored tensors never change.
CAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.LayerNorm, nn.GroupNorm)
# The attribute of a layer that computes in a fixed dtype other than its weights': set on the instance by
# apply_manual_cast, on the class by the nodes' comfy.ops layers; compute_dtype_of reads it.
COMPUTE_DTYPE_ATTR = "deepgen_compute_dtype"


def _quantized(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "bitsandbytes"


def is_cast_layer(cls: type) -> bool:
    """Whether layers of class `cls` follow their stage's compute dtype; quantized (bitsandbytes) layers do not:
    they manage their own compute dtype."""
    return not _quantized(cls) and (issubclass(cls, CAST_LAYERS) or "RMSNorm" in cls.__name__)


def casts_weights(m: nn.Module, compute_dtype: torch.dtype) -> bool:
    """Whether layer `m` holds a floating weight stored in another dtype than `compute_dtype` (one that needs
    casting per call); a layer whose weights are all in it simply runs as stored."""
    return any(p is not None and p.is_floating_point() and p.dtype != compute_dtype for p in m._parameters.values())


def cast_input(x, dtype: torch.dtype):
    """A floating tensor argument of a cast layer, in `dtype`; anything else (token ids, flags) unchanged."""
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _manual_cast_forward(self: nn.Module, *args, **kwargs):
    """Bound as the instance's forward (a bound method, so deepcopy rebinds it to the copy)."""
    dtype = getattr(self, COMPUTE_DTYPE_ATTR)
    stored = dict(self._parameters)
    try:  # swap in per-call casts; the Parameters themselves are untouched
        for name, p in stored.items():
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                self._parameters[name] = p.to(dtype)
        args = tuple(cast_input(a, dtype) for a in args)
        kwargs = {k: cast_input(v, dtype) for k, v in kwargs.items()}
        return type(self).forward(self, *args, **kwargs)
    finally:
        self._parameters.update(stored)


def apply_manual_cast(module: nn.Module, compute_dtype) -> nn.Module:
    """Make the cast layers (is_cast_layer) of `module` compute in `compute_dtype` while their weights stay stored
    as they are. Idempotent; undo with remove_manual_cast."""
    compute_dtype = parse_dtype(compute_dtype)
    remove_manual_cast(module)
    if compute_dtype is None:
        return module
    for m in module.modules():
        if not (is_cast_layer(type(m)) and casts_weights(m, compute_dtype)):
            continue
        setattr(m, COMPUTE_DTYPE_ATTR, compute_dtype)
        m.forward = types.MethodType(_manual_cast_forward, m)
    return module


def remove_manual_cast(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if COMPUTE_DTYPE_ATTR in m.__dict__:  # the instance's: a comfy.ops layer's class attribute is not ours to undo
            del m.forward
            delattr(m, COMPUTE_DTYPE_ATTR)
    return module


def dominant_dtype(tensors) -> torch.dtype | None:
    """The floating dtype holding the most elements among `tensors` (a module's parameters, a state
    dict's values, or any iterable of tensors); None when none is floating."""
    if isinstance(tensors, nn.Module):
        tensors = tensors.parameters()
    elif isinstance(tensors, dict):
        tensors = tensors.values()
    counts: dict[torch.dtype, int] = {}
    for t in tensors:
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else None


def cast_floating(state: dict, dtype: torch.dtype | None) -> dict:
    """Floating tensors to `dtype` (None: the state's dominant dtype, so a model is never mixed)."""
    dtype = dtype or dominant_dtype(state)
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def compute_dtype_of(module: nn.Module) -> torch.dtype | None:
    """The dtype `module` computes in: the fixed compute dtype of its cast layers where one is set (the engine's
    manual cast, the nodes' comfy.ops layers), else its storage dtype."""
    for m in module.modules():
        dtype = getattr(m, COMPUTE_DTYPE_ATTR, None)
        if dtype is not None:
            return dtype
    return dominant_dtype(module)


FP8_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def store_linear_weights(module: nn.Module, dtype) -> nn.Module:
    """Re-store the weight of every nn.Linear (the bulk of a transformer) in `dtype`, e.g. fp8 e4m3fn.

    Biases, norms, embeddings and convolutions keep their dtype. fp8 cannot be computed in: follow with
    apply_manual_cast(module, compute_dtype), which casts each weight per call (as ComfyUI's manual
    cast does); the stored tensors are replaced once, here."""
    dtype = FP8_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dtype, torch.dtype):
        raise DeepGenInputError(f"weight storage {dtype!r} is not supported; use one of {list(FP8_DTYPES)}")
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear) and not _quantized(type(m)):
                if m.weight.dtype != dtype:
                    m.weight = nn.Parameter(m.weight.to(dtype), requires_grad=False)
    return module


def _finite(t: torch.Tensor) -> bool:
    if t.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return bool(torch.isfinite(t).all())
    return not t.is_floating_point() or bool(torch.isfinite(t.to(torch.float32)).all())  # fp8: one tensor at a time


def nonfinite_cause(stage: str, inputs: dict, weights: dict, compute_dtype: torch.dtype | None) -> str:
    """Why `stage` (e.g. "sampling") produced NaN or infinite values, in words with the fix, looked for in order:
    an input that already held them (name -> tensor), weights that hold them (a damaged file: component ->
    named tensors), overflow in fp16 compute; else what was ruled out. Called only after a failure: it reads
    every weight once."""
    for name, t in inputs.items():
        if isinstance(t, torch.Tensor) and not _finite(t):
            return (f"{stage} produced NaN or infinite values because its {name} already holds them: the node that "
                    f"made the {name} failed (look there first)")
    for component, named in weights.items():
        bad = [n for n, t in named if not _finite(t.detach())]
        if bad:
            return (f"{stage} produced NaN or infinite values because the {component} weights hold them ({len(bad)} "
                    f"tensor(s), e.g. {bad[0]}): the weight file is damaged or was saved from a diverged model; "
                    f"download the {component} weights again")
    dtype = str(compute_dtype).removeprefix("torch.") if compute_dtype is not None else "its dtype"
    if compute_dtype == torch.float16:
        return (f"{stage} produced NaN or infinite values: numerical overflow while computing in float16; set "
                "weight_dtype to bf16 or fp32 in the loader")
    return (f"{stage} produced NaN or infinite values although its inputs and weights are finite and it computes in "
            f"{dtype} (not a float16 overflow); try weight_dtype fp32, and if it persists report it with the workflow")
