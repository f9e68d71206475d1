"""The VLM and SCB patchers (DEEPGEN_VLM / DEEPGEN_SCB) compute through the DiT's cast mechanism
(nodes/comfy_ops.py use_comfy_ops: layers re-classed to comfy.ops classes), bit for bit like the engine's
precision.apply_manual_cast (the same layers cast, to the same dtype), and stay identical when ComfyUI leaves every
layer offloaded (lowvram).

The engine's encode (VLM hidden states, then the SCB) runs on the tiny fixture with one reference image,
so the ViT's Conv3d patch embedding, the token Embedding, the RMSNorms, the Linears and the SCB's
LayerNorms all take part.
"""
from __future__ import annotations

import copy
import sys

import pytest
import torch

from deepgen_model.conditioning import encode
from deepgen_model.precision import COMPUTE_DTYPE_ATTR, apply_manual_cast, compute_dtype_of
from deepgen_model.scb import SCBConfig, SCBConnector

BF16, FP32 = torch.bfloat16, torch.float32
CPU = torch.device("cpu")
# storage, compute: a CPU's VLM (bf16 stored, fp32 computed) and bf16 throughout (a GPU's, or a native-bf16
# CPU's SCB)
CASES = [(BF16, FP32), (BF16, BF16)]


@pytest.fixture(scope="module")
def cm(comfy_inprocess):
    """nodes/comfy_models.py as ComfyUI imported it."""
    return sys.modules[f"{comfy_inprocess.pack.__name__}.nodes.comfy_models"]


@pytest.fixture(scope="module")
def ops(comfy_inprocess):
    """nodes/comfy_ops.py as ComfyUI imported it."""
    return sys.modules[f"{comfy_inprocess.pack.__name__}.nodes.comfy_ops"]


def _stored(tiny, storage):
    scb = SCBConnector(SCBConfig.from_state_dict(tiny.scb_state, tiny.scb_heads)).eval()
    scb.load_state_dict(tiny.scb_state, strict=True)
    return copy.deepcopy(tiny.vlm_base).to(storage), scb.to(storage)


def _encode(vlm, tokenizer, scb):
    """(stacked VLM hidden states, seq, pooled) of a one-reference edit encode."""
    image = torch.rand(60, 100, 3, generator=torch.Generator().manual_seed(7))
    seen = []
    hook = scb.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        cond = encode(vlm, tokenizer, scb, "make it blue", "blurry", [image], max_side=64)
    finally:
        hook.remove()
    return seen[0], cond.seq, cond.pooled


def _engine(tiny, storage, compute):
    vlm, scb = _stored(tiny, storage)
    if compute != storage:
        apply_manual_cast(vlm, compute)
        apply_manual_cast(scb, compute)
    return _encode(vlm, tiny.tokenizer, scb)


def _patchers(cm, tiny, storage, compute):
    vlm, scb = _stored(tiny, storage)
    return (cm.encoder_patcher(cm.VLMModule(vlm, tiny.tokenizer, CPU, "tiny"), storage, compute, CPU, CPU),
            cm.encoder_patcher(scb, storage, compute, CPU, CPU))


def _through(cm, vlm_patcher, scb_patcher):
    model, tokenizer = cm.vlm_parts_of(vlm_patcher)
    return _encode(model, tokenizer, cm.scb_module(scb_patcher))


def _layers(vlm_patcher, scb_patcher):
    """Every module that holds parameters itself, but the SCB's think tokens (a bare Parameter the
    encode casts itself, as in the engine)."""
    return [m for p in (vlm_patcher, scb_patcher) for m in p.model.modules()
            if m._parameters and not isinstance(m, SCBConnector)]


def _assert_equal(got, want):
    for name, a, b in zip(("VLM hidden states", "seq", "pooled"), got, want):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), f"{name}: max diff {(a.float() - b.float()).abs().max()}"


@pytest.mark.parametrize("storage, compute", CASES)
def test_patchers_compute_like_the_engines_manual_cast(cm, tiny, storage, compute):
    import comfy.model_management as mm
    import comfy.ops

    want = _engine(tiny, storage, compute)
    assert want[0].dtype == compute  # the fixture does run the VLM in the compute dtype
    vlm_p, scb_p = _patchers(cm, tiny, storage, compute)
    layers = _layers(vlm_p, scb_p)
    # every layer is a comfy.ops one (so ModelPatcher can offload it), the transformers/torch class kept as a base
    assert all(isinstance(m, comfy.ops.CastWeightBiasOp) for m in layers), \
        {type(m).__mro__[1].__name__ for m in layers if not isinstance(m, comfy.ops.CastWeightBiasOp)}
    names = {type(m).__name__ for m in layers}
    assert {"Linear", "Conv3d", "Embedding", "LayerNorm"} <= names and any("RMSNorm" in n for n in names)
    assert {type(m).comfy_cast_weights for m in layers} == {compute != storage}
    mm.load_models_gpu([vlm_p, scb_p], force_full_load=True)  # what the encode nodes do
    try:
        _assert_equal(_through(cm, vlm_p, scb_p), want)
    finally:
        mm.unload_all_models()


@pytest.mark.parametrize("storage, compute", CASES)
def test_patchers_cast_the_layers_the_engine_casts(cm, ops, tiny, storage, compute):
    """One rule (precision.is_cast_layer / casts_weights): the layers given a fixed compute dtype are those the
    engine's manual cast casts, and the one probe (comfy_ops.compute_dtype) reports the compute dtype."""
    vlm, scb = _stored(tiny, storage)
    engine = {}
    for part, module in (("vlm", vlm), ("scb", scb)):
        apply_manual_cast(module, compute)
        engine[part] = {n: m.__dict__[COMPUTE_DTYPE_ATTR] for n, m in module.named_modules()
                        if COMPUTE_DTYPE_ATTR in m.__dict__}
    vlm_p, scb_p = _patchers(cm, tiny, storage, compute)
    nodes = {part: {n: getattr(m, COMPUTE_DTYPE_ATTR) for n, m in module.named_modules()
                    if getattr(m, COMPUTE_DTYPE_ATTR, None) is not None}
             for part, module in (("vlm", vlm_p.model.vlm), ("scb", scb_p.model))}
    assert nodes == engine
    assert bool(engine["vlm"]) == (compute != storage)  # bf16 -> fp32 casts every weight layer: the test can fail
    assert ops.compute_dtype(vlm_p) == ops.compute_dtype(scb_p) == compute
    assert ops.compute_dtype(vlm_p.model.vlm) == compute_dtype_of(vlm) == compute


def test_the_fixture_tells_fp32_from_bf16_compute(tiny):
    """Keeps the test above able to fail: computing in the storage dtype (what ComfyUI's stock manual cast
    would do with the VLM, whose activations follow its bf16 weights) changes the result here."""
    fp32, bf16 = _engine(tiny, BF16, FP32), _engine(tiny, BF16, BF16)
    assert not torch.equal(fp32[0], bf16[0].float()) and not torch.equal(fp32[1], bf16[1].float())


@pytest.mark.parametrize("storage, compute", CASES)
def test_lowvram_partial_load_gives_the_same_conditioning(cm, tiny, storage, compute):
    """ComfyUI leaves every layer offloaded (lowvram_model_memory=1): each casts its weights per call and the
    conditioning is unchanged. On a GPU this is what lets part of the VLM stay in system RAM."""
    want = _engine(tiny, storage, compute)
    vlm_p, scb_p = _patchers(cm, tiny, storage, compute)
    with torch.no_grad():
        for p in (vlm_p, scb_p):
            p.patch_model(device_to=CPU, lowvram_model_memory=1)
        try:
            assert vlm_p.model.model_lowvram and scb_p.model.model_lowvram
            assert all(m.comfy_cast_weights for m in _layers(vlm_p, scb_p))
            got = _through(cm, vlm_p, scb_p)
        finally:
            for p in (vlm_p, scb_p):
                p.unpatch_model(device_to=CPU)
    _assert_equal(got, want)
    assert {m.comfy_cast_weights for m in _layers(vlm_p, scb_p)} == {compute != storage}  # modes restored
