"""Storage/compute dtype choice and manual casting (engine-feasibility §3)."""
import copy

import pytest
import torch
from torch import nn

from deepgen_model import precision
from deepgen_model.errors import DeepGenInputError
from deepgen_model.precision import apply_manual_cast, remove_manual_cast, resolve_dtypes


def test_resolve_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtypes("cpu") == (torch.bfloat16, torch.float32)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtypes(torch.device("cpu")) == (torch.bfloat16, torch.bfloat16)


def test_cpu_policy_per_stage(monkeypatch):
    """Without native bf16 every stage computes in fp32; with it, the stages in CPU_BF16_STAGES compute in bf16."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert {precision.cpu_compute_dtype(s) for s in precision.STAGES} == {torch.float32}
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "CPU_BF16_STAGES", frozenset({"vlm", "dit"}))
    assert [resolve_dtypes("cpu", stage=s)[1] for s in precision.STAGES] == [
        torch.bfloat16, torch.float32, torch.bfloat16, torch.float32]
    assert resolve_dtypes("cpu", "fp32", stage="dit") == (torch.float32, torch.float32)  # explicit wins
    with pytest.raises(ValueError, match="stage"):
        precision.cpu_compute_dtype("unet")


def test_pipeline_computes_each_stage_as_the_policy_says(monkeypatch, tiny_layouts):
    from deepgen_model import DeepGenPipeline
    from deepgen_model.precision import compute_dtype_of, dominant_dtype

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "CPU_BF16_STAGES", frozenset({"vlm", "dit"}))
    pipe = DeepGenPipeline.from_pretrained(tiny_layouts["diffusers"], device="cpu")
    parts = {"vlm": pipe.vlm, "scb": pipe.scb, "dit": pipe.transformer, "vae": pipe.vae}
    assert {k: dominant_dtype(m) for k, m in parts.items()} == dict.fromkeys(parts, torch.bfloat16)
    assert {k: compute_dtype_of(m) for k, m in parts.items()} == {
        "vlm": torch.bfloat16, "scb": torch.float32, "dit": torch.bfloat16, "vae": torch.float32}
    out = pipe("a red cube", width=32, height=32, steps=1)
    assert torch.isfinite(out.images).all()


def test_resolve_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtypes("cuda:0") == (torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtypes("cuda") == (torch.float16, torch.float16)


def test_explicit_dtype_honoured():
    assert resolve_dtypes("cpu", "fp32") == (torch.float32, torch.float32)
    assert resolve_dtypes("cpu", torch.bfloat16) == (torch.bfloat16, torch.bfloat16)
    assert resolve_dtypes("cuda", "fp16") == (torch.float16, torch.float16)
    assert precision.parse_dtype("auto") is None
    with pytest.raises(DeepGenInputError, match="int8"):
        resolve_dtypes("cpu", "int8")


def test_cpu_probe_matches_torch():
    assert precision.cpu_has_native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class AllLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)
        self.lin = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.3)

    def forward(self, ids):
        x = self.emb(ids)  # [B, 16, 8]
        x = self.conv(x.transpose(1, 2).reshape(-1, 8, 4, 4))
        x = self.gn(x).flatten(2).transpose(1, 2)
        return self.lin(self.rms(self.ln(x)))


def _rounded(model, dtype=torch.bfloat16):
    """fp32 model whose weights (and buffers) are rounded to `dtype`: the manual-cast reference."""
    ref = copy.deepcopy(model).float()
    with torch.no_grad():
        for t in list(ref.parameters()) + list(ref.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(dtype).float())
    return ref


def _check(model, run):
    torch.manual_seed(0)
    ref = _rounded(model)
    stored = copy.deepcopy(model).to(torch.bfloat16)
    ptrs = {n: p.data_ptr() for n, p in stored.named_parameters()}
    apply_manual_cast(stored, torch.float32)
    with torch.no_grad():
        want, got = run(ref), run(stored)
    assert all(p.dtype == torch.bfloat16 for p in stored.parameters())  # storage stays bf16
    assert {n: p.data_ptr() for n, p in stored.named_parameters()} == ptrs  # never re-materialised
    return stored, want, got


def test_manual_cast_all_layer_types():
    ids = torch.randint(0, 11, (2, 16))
    stored, want, got = _check(AllLayers(), lambda m: m(ids))
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    remove_manual_cast(stored)
    with torch.no_grad():
        plain = stored(ids)  # back to bf16 compute
    assert plain.dtype == torch.bfloat16 and not torch.equal(plain.float(), want)
    assert all(precision.COMPUTE_DTYPE_ATTR not in m.__dict__ for m in stored.modules())


def test_cast_layers_are_weight_layers_and_rmsnorms_but_not_quantized_ones():
    """The rule the engine's manual cast and the nodes' comfy.ops layers (nodes/comfy_ops.py) both follow."""
    class QuantLinear(nn.Linear):  # what bitsandbytes' Linear8bitLt / Linear4bit are
        __module__ = "bitsandbytes.nn.modules"

    class OwnRMSNorm(nn.Module):  # transformers' and diffusers' RMSNorms share no base class
        pass

    class Subclassed(nn.Linear):
        pass

    assert all(precision.is_cast_layer(c) for c in (*precision.CAST_LAYERS, nn.RMSNorm, OwnRMSNorm, Subclassed))
    assert not any(precision.is_cast_layer(c) for c in (QuantLinear, nn.Module, nn.Dropout, nn.SiLU))
    m = apply_manual_cast(nn.Sequential(QuantLinear(2, 2), Subclassed(2, 2), nn.Linear(2, 2).float()), torch.float32)
    assert [precision.COMPUTE_DTYPE_ATTR in x.__dict__ for x in m] == [False, False, False]  # fp32 already: nothing
    m = apply_manual_cast(m.to(torch.bfloat16), torch.float32)
    assert [precision.COMPUTE_DTYPE_ATTR in x.__dict__ for x in m] == [False, True, True]


def test_manual_cast_tiny_scb(tiny):
    from deepgen_model.scb import SCBConfig, SCBConnector

    scb = SCBConnector(SCBConfig.from_state_dict(tiny.scb_state, tiny.scb_heads))
    scb.load_state_dict(tiny.scb_state)
    x = torch.randn(2, 7, scb.projector_1.in_features)
    _, want, got = _check(scb, lambda m: m(x))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_manual_cast_tiny_dit(tiny):
    g = torch.Generator().manual_seed(0)
    cfg = tiny.dit.config
    inputs = dict(hidden_states=torch.randn(1, 16, 8, 8, generator=g),
                  encoder_hidden_states=torch.randn(1, 5, cfg.joint_attention_dim, generator=g),
                  pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
                  timestep=torch.tensor([500.0]))
    _, want, got = _check(tiny.dit, lambda m: m(**inputs).sample)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_manual_cast_tiny_vlm_text(tiny):
    ids = torch.tensor([[1, 5, 9, 200, 3]])
    _, want, got = _check(tiny.vlm_base, lambda m: m.model.language_model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_manual_cast_survives_deepcopy():
    ids = torch.randint(0, 11, (2, 16))
    stored = apply_manual_cast(AllLayers().to(torch.bfloat16), torch.float32)
    clone = copy.deepcopy(stored)
    with torch.no_grad():
        clone.lin.weight.add_(1.0)  # the copy must use its own weights, not the original's
        assert not torch.equal(clone(ids), stored(ids))
        assert clone(ids).dtype == torch.float32


def test_manual_cast_noop_when_dtypes_match():
    m = AllLayers()
    apply_manual_cast(m, torch.float32)
    assert not any(precision.COMPUTE_DTYPE_ATTR in x.__dict__ for x in m.modules())


def test_fp8_linear_storage_with_manual_cast_equals_rounded_weights():
    from deepgen_model.precision import compute_dtype_of, store_linear_weights

    torch.manual_seed(0)
    model = AllLayers()
    ids = torch.randint(0, 11, (2, 16))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.lin.weight.copy_(ref.lin.weight.to(torch.float8_e4m3fn).float())
        want = ref(ids)
    store_linear_weights(model, "fp8_e4m3fn")
    assert model.lin.weight.dtype == torch.float8_e4m3fn and model.ln.weight.dtype == torch.float32
    assert compute_dtype_of(model) == torch.float32  # storage dominated by fp32 here; no cast applied yet
    apply_manual_cast(model, torch.float32)
    assert compute_dtype_of(model) == torch.float32
    with torch.no_grad():
        assert torch.equal(model(ids), want)
    with pytest.raises(DeepGenInputError):
        store_linear_weights(model, "int3")


def test_compute_dtype_of_reports_the_manual_cast():
    from deepgen_model.precision import compute_dtype_of

    m = AllLayers().to(torch.bfloat16)
    assert compute_dtype_of(m) == torch.bfloat16
    assert compute_dtype_of(apply_manual_cast(m, torch.float32)) == torch.float32


def test_nonfinite_cause_names_the_cause_it_finds():
    """Issue 20: NaN out of a stage is explained by what holds NaN (an input, the weights) before fp16 is blamed."""
    layer = nn.Linear(2, 2)
    ok = {"latent": torch.zeros(2)}
    weights = lambda: {"DiT": layer.named_parameters()}  # noqa: E731 (one pass per call, like the nodes)
    msg = precision.nonfinite_cause("sampling", {"latent": torch.tensor([float("nan")])}, weights(), torch.float16)
    assert msg.startswith("sampling produced NaN or infinite values because its latent already holds them")
    with torch.no_grad():
        layer.bias[0] = float("inf")
    msg = precision.nonfinite_cause("sampling", ok, weights(), torch.float32)
    assert "because the DiT weights hold them (1 tensor(s), e.g. bias)" in msg and "download the DiT" in msg
    assert "float16" not in msg and "fp16" not in msg
    with torch.no_grad():
        layer.bias.zero_()
    assert "overflow while computing in float16" in precision.nonfinite_cause("sampling", ok, weights(), torch.float16)
    msg = precision.nonfinite_cause("sampling", ok, weights(), torch.float32)
    assert "computes in float32 (not a float16 overflow)" in msg
    fp8 = {"DiT": [("w", torch.full((2,), float("nan")).to(torch.float8_e4m3fn))]}  # fp8 storage is checked too
    assert "DiT weights hold them" in precision.nonfinite_cause("sampling", ok, fp8, torch.bfloat16)
