"""SCB connector (docs/inference.md#scb-connector) against an independent reference written from that section."""
import math

import pytest
import torch

from deepgen_model.scb import SCBConfig, SCBConnector


@pytest.fixture(scope="module")
def scb(tiny):
    b = SCBConnector(SCBConfig.from_state_dict(tiny.scb_state, tiny.scb_heads)).eval()
    b.load_state_dict(tiny.scb_state, strict=True)
    return b


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _reference(sd, heads, x):
    """projector_1 -> 6 pre-LN layers (unmasked softmax attention, tanh GELU) -> mean over ALL positions."""
    lin = lambda name, t: t @ sd[name + ".weight"].T + sd[name + ".bias"]  # noqa: E731
    x = lin("projector_1", x)
    b, n, c = x.shape
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("connector.layers.")})
    for i in layers:
        p = f"connector.layers.{i}."
        h = _layer_norm(x, sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"])
        q, k, v = (lin(p + f"self_attn.{s}_proj", h).view(b, n, heads, -1).transpose(1, 2) for s in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        x = x + lin(p + "self_attn.out_proj", (att @ v).transpose(1, 2).reshape(b, n, c))
        h = _layer_norm(x, sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"])
        x = x + lin(p + "mlp.fc2", _gelu_tanh(lin(p + "mlp.fc1", h)))
    return lin("projector_3", x), lin("projector_2", x.mean(dim=1))


def test_config_read_from_the_state(tiny, scb):
    cfg, cc = scb.config, tiny.connector_config
    assert (cfg.llm_hidden_size, cfg.num_stacked_layers, cfg.num_queries) == (64, 6, 128)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        cc["hidden_size"], cc["intermediate_size"], cc["num_hidden_layers"], tiny.scb_heads)
    assert torch.equal(scb.meta_queries, tiny.scb_state["meta_queries"])


def test_matches_the_reference(tiny, scb):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 6 * 64, generator=g)
    with torch.no_grad():
        seq, pooled = scb(x)
    ref_seq, ref_pooled = _reference(tiny.scb_state, tiny.scb_heads, x)
    cfg = scb.config
    assert seq.shape == (2, 37, cfg.joint_attention_dim) and pooled.shape == (2, cfg.pooled_projection_dim)
    torch.testing.assert_close(seq, ref_seq, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-4)


def test_no_mask_every_position_counts(scb):
    """Pads are ordinary tokens for the connector and the pooled mean (docs/inference.md#pitfall-1)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 20, 6 * 64, generator=g)
    y = x.clone()
    y[:, 0] += 1.0  # a "pad" position at the left
    with torch.no_grad():
        (sx, px), (sy, py) = scb(x), scb(y)
    assert (px - py).abs().max() > 1e-4
    assert (sx[:, 1:] - sy[:, 1:]).abs().max() > 1e-4  # bidirectional: later tokens see the first one
    # the connector has no positions: permuting tokens permutes seq and leaves pooled unchanged
    perm = torch.randperm(20, generator=g)
    with torch.no_grad():
        sp, pp = scb(x[:, perm])
    torch.testing.assert_close(sp, sx[:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pp, px, rtol=1e-4, atol=1e-5)


def test_the_old_names_still_work_and_warn(tiny, scb):
    """SCBConnector / SCBConfig / DeepGenPipeline.scb are the one spelling (kinds.py); the names that said
    "bridge" stay importable as deprecated aliases of the very same objects."""
    import deepgen_model
    from deepgen_model import DeepGenPipeline

    with pytest.warns(DeprecationWarning, match="use deepgen_model.SCBConnector"):
        assert deepgen_model.SCBBridge is SCBConnector
    with pytest.warns(DeprecationWarning, match="use deepgen_model.SCBConfig"):
        assert deepgen_model.BridgeConfig is SCBConfig
    pipe = DeepGenPipeline(tiny.vlm_base, tiny.tokenizer, scb, tiny.dit, tiny.vae)
    with pytest.warns(DeprecationWarning, match="use DeepGenPipeline.scb"):
        assert pipe.bridge is scb
    with pytest.raises(AttributeError):
        deepgen_model.Bridge
