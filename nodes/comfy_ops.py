"""ComfyUI's ops for DeepGen's models: which comfy.ops classes their layers run as, which dtype they compute in
inside ComfyUI, and the one question every node asks of a model: what dtype does it compute in (compute_dtype).

The rule itself (which layers follow a compute dtype, the CPU's compute dtype per stage) is the engine's,
deepgen_model/precision.py; this module applies it with comfy.ops, and holds what only ComfyUI needs: the
class swapping, ComfyUI's own manual-cast choice for the DiT, and reading a MODEL's dtype. Kept apart from
nodes/comfy_models.py (the model classes) as it depends on comfy.ops internals (CastWeightBiasOp,
cast_bias_weight) that core may change, where the model classes depend on core's model API.

The VLM and the SCB connector (transformers / our modules) have their layers re-classed in place (weights untouched)
to comfy.ops classes, the classes the DiT's MMDiT is built from, so that ModelPatcher can cast stored weights per
call and leave part of a model offloaded (lowvram partial loading). Two modes per layer:
  plain:  its own forward; ModelPatcher turns casting on for the layers it leaves offloaded;
  a fixed compute dtype (the VLM and the SCB when storage != compute, e.g. bf16 stored, fp32 computed on a
          CPU): floating inputs are cast to that dtype as well, so each layer runs exactly the arithmetic of
          precision.apply_manual_cast (the engine's). Casting to the input's dtype would not do: transformers
          picks activation dtypes from parameter dtypes (Qwen2.5-VL's patch embedding casts the pixels to its
          weight's dtype, a bf16 embedding returns bf16), so the VLM would silently compute in bf16.
"""
from __future__ import annotations

import functools

import torch

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops

from ..deepgen_model.precision import (CAST_LAYERS, COMPUTE_DTYPE_ATTR, cast_input, casts_weights, compute_dtype_of,
                                       cpu_compute_dtype, dominant_dtype, is_cast_layer)


def compute_dtype(model) -> torch.dtype | None:
    """The dtype a model computes in: a MODEL (ModelPatcher or its BaseModel) in ComfyUI's manual-cast dtype where it
    has one, else its storage dtype; a DEEPGEN_VLM / DEEPGEN_SCB patcher or any module as precision.compute_dtype_of
    says (the fixed compute dtype of its comfy.ops layers, else the storage dtype)."""
    if isinstance(model, comfy.model_patcher.ModelPatcher):
        model = model.model
    if isinstance(model, comfy.model_base.BaseModel):  # core casts the DiT's inputs to it; each layer follows its input
        return model.manual_cast_dtype or model.get_dtype()
    return compute_dtype_of(model)


# ------------------------------------------------------------------ the DiT: core's manual cast

def dit_weight_dtype(tensors: dict, supported: list[torch.dtype]) -> torch.dtype:
    """The DiT's storage dtype for weight_dtype "auto": ComfyUI's choice for the device, except on a CPU whose
    DiT computes in bf16 (precision.cpu_compute_dtype)."""
    dtype = mm.unet_dtype(model_params=sum(t.numel() for t in tensors.values()), supported_dtypes=supported,
                          weight_dtype=dominant_dtype(tensors))
    if mm.get_torch_device().type == "cpu" and cpu_compute_dtype("dit") == torch.bfloat16:
        return torch.bfloat16  # ComfyUI picks fp32 on every CPU; one with native bf16 runs bf16 faster
    return dtype


def dit_operations(weight_dtype: torch.dtype, load_device, supported: list[torch.dtype]):
    """-> (manual-cast dtype or None, the comfy.ops classes to build the DiT from) for a DiT stored in `weight_dtype`.

    ComfyUI's choice for the device (a dtype the device cannot compute in, e.g. fp8, is cast per call), except on a
    CPU: ComfyUI computes in fp32 on every CPU, precision.cpu_compute_dtype("dit") decides (bf16 on a CPU with native
    bf16). fp16 weights on a CPU keep ComfyUI's fp32."""
    manual_cast = mm.unet_manual_cast(weight_dtype, load_device, supported)
    if manual_cast is not None and torch.device(load_device).type == "cpu" and weight_dtype != torch.float16:
        compute = cpu_compute_dtype("dit")
        manual_cast = None if compute == weight_dtype else compute
    return manual_cast, comfy.ops.manual_cast if manual_cast is not None else comfy.ops.disable_weight_init


# ------------------------------------------------------------------ the VLM and the SCB: comfy.ops class swapping

def _plain_class(cls: type) -> type | None:
    """The torch/diffusers/transformers class a layer swaps from (also for an already swapped one); None: not swapped
    (not a cast layer, or one of ComfyUI's own, which cast through comfy.ops already)."""
    cls = getattr(cls, "_deepgen_plain", cls)
    if not is_cast_layer(cls) or cls.__module__.startswith("comfy."):
        return None
    return cls


class _CastParams(comfy.ops.CastWeightBiasOp):
    """A layer without a comfy.ops class (the RMSNorms: each model has its own math): its own forward, run with its
    weight and bias cast by comfy.ops (to the input's device and dtype, offload streams and weight patches
    included) when casting is on."""

    def forward(self, x, *args, **kwargs):
        comfy.ops.run_every_op()
        if self.weight is None or not (self.comfy_cast_weights or self.weight_function or self.bias_function):
            return super().forward(x, *args, **kwargs)
        weight, bias, stream = comfy.ops.cast_bias_weight(self, x, offloadable=True)
        stored = dict(self._parameters)
        self._parameters["weight"] = weight  # per call; the Parameters themselves are untouched
        if stored.get("bias") is not None:
            self._parameters["bias"] = bias
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            self._parameters.update(stored)
            comfy.ops.uncast_bias_weight(self, weight, bias, stream)


class _FixedCompute:
    """Floating inputs to the class's compute dtype, then the comfy.ops forward (weights cast to that dtype)."""

    def forward(self, *args, **kwargs):
        dtype = getattr(self, COMPUTE_DTYPE_ATTR)
        args = tuple(cast_input(a, dtype) for a in args)
        kwargs = {k: cast_input(v, dtype) for k, v in kwargs.items()}
        return super().forward(*args, **kwargs)


class _FixedComputeEmbedding(_FixedCompute):
    """comfy.ops' Embedding returns its weight's dtype unless given out_dtype (a bf16 lookup cast to fp32 equals
    the lookup of the weight cast to fp32: indexing is exact)."""

    def forward(self, *args, **kwargs):
        kwargs.setdefault("out_dtype", getattr(self, COMPUTE_DTYPE_ATTR))
        return super().forward(*args, **kwargs)


@functools.cache
def _swapped_class(plain: type, compute: torch.dtype | None) -> type:
    if plain in CAST_LAYERS:  # comfy.ops has a class of the same name for each (see comfy_compat.py)
        parents = (getattr(comfy.ops.disable_weight_init, plain.__name__),)
    else:
        parents = (_CastParams, plain)
    attrs = {"_deepgen_plain": plain, "comfy_cast_weights": compute is not None, "__module__": __name__}
    if compute is not None:
        parents = (_FixedComputeEmbedding if plain is torch.nn.Embedding else _FixedCompute, *parents)
        attrs[COMPUTE_DTYPE_ATTR] = compute
    return type(plain.__name__, parents, attrs)


def use_comfy_ops(module: torch.nn.Module, compute: torch.dtype | None = None) -> torch.nn.Module:
    """Re-class every cast layer of `module` in place (weights untouched) to a comfy.ops class (see above).

    compute: a fixed compute dtype for the layers whose weights are stored in another dtype (the layers
    precision.apply_manual_cast would cast); the others stay plain. Idempotent; a later call re-modes."""
    for m in module.modules():
        plain = _plain_class(type(m))
        if plain is None:
            continue
        fixed = compute if compute is not None and casts_weights(m, compute) else None
        if not hasattr(m, "bias"):  # comfy.ops.cast_bias_weight reads it; torch's Embedding and
            m.bias = None           # transformers' RMSNorms have none
        m.__class__ = _swapped_class(plain, fixed)
    return module
