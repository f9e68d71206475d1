"""SCB bridge (docs/inference.md#scb-bridge) against an independent reference written from that section."""
import math

import pytest
import torch

from deepgen_model.bridge import BridgeConfig, SCBBridge


@pytest.fixture(scope="module")
def bridge(tiny):
    b = SCBBridge(BridgeConfig.from_state_dict(tiny.bridge_state, tiny.bridge_heads)).eval()
    b.load_state_dict(tiny.bridge_state, strict=True)
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


def test_config_read_from_the_state(tiny, bridge):
    cfg, cc = bridge.config, tiny.connector_config
    assert (cfg.llm_hidden_size, cfg.num_stacked_layers, cfg.num_queries) == (64, 6, 128)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        cc["hidden_size"], cc["intermediate_size"], cc["num_hidden_layers"], tiny.bridge_heads)
    assert torch.equal(bridge.meta_queries, tiny.bridge_state["meta_queries"])


def test_matches_the_reference(tiny, bridge):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 6 * 64, generator=g)
    with torch.no_grad():
        seq, pooled = bridge(x)
    ref_seq, ref_pooled = _reference(tiny.bridge_state, tiny.bridge_heads, x)
    cfg = bridge.config
    assert seq.shape == (2, 37, cfg.joint_attention_dim) and pooled.shape == (2, cfg.pooled_projection_dim)
    torch.testing.assert_close(seq, ref_seq, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-4)


def test_no_mask_every_position_counts(bridge):
    """Pads are ordinary tokens for the connector and the pooled mean (docs/inference.md#pitfall-1)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 20, 6 * 64, generator=g)
    y = x.clone()
    y[:, 0] += 1.0  # a "pad" position at the left
    with torch.no_grad():
        (sx, px), (sy, py) = bridge(x), bridge(y)
    assert (px - py).abs().max() > 1e-4
    assert (sx[:, 1:] - sy[:, 1:]).abs().max() > 1e-4  # bidirectional: later tokens see the first one
    # the connector has no positions: permuting tokens permutes seq and leaves pooled unchanged
    perm = torch.randperm(20, generator=g)
    with torch.no_grad():
        sp, pp = bridge(x[:, perm])
    torch.testing.assert_close(sp, sx[:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pp, px, rtol=1e-4, atol=1e-5)
