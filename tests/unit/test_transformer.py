"""DeepGenTransformer: the Kontext-style reference-token forward of docs/inference.md#dit on the tiny DiT."""
import pytest
import torch
import torch.nn.functional as F

from deepgen_model import tiny as deepgen_tiny
from deepgen_model.errors import DeepGenInputError
from deepgen_model.transformer import DeepGenTransformer

CFG = deepgen_tiny.TINY_DIT
C, D = CFG["in_channels"], CFG["joint_attention_dim"]


@pytest.fixture(scope="module")
def stock():
    return deepgen_tiny.build_dit(0)  # keeps diffusers' own JointAttnProcessor2_0


@pytest.fixture(scope="module")
def model():
    return DeepGenTransformer(deepgen_tiny.build_dit(0))  # same weights


def rand(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def context(b, seed=100, length=5):
    return rand(b, length, D, seed=seed), rand(b, CFG["pooled_projection_dim"], seed=seed + 1)


def conv_tokens(dit, z):
    """Patch-embed conv only (no positions): [B, N, inner]."""
    w, b = dit.pos_embed.proj.weight, dit.pos_embed.proj.bias
    return F.conv2d(z, w, b, stride=CFG["patch_size"]).flatten(2).transpose(1, 2)


def table_crop(dit, gh, gw):
    """Centred crop of the stored sin-cos table, computed from the raw buffer."""
    m = CFG["pos_embed_max_size"]
    table = dit.pos_embed.pos_embed.reshape(m, m, -1)
    top, left = (m - gh) // 2, (m - gw) // 2
    return table[top:top + gh, left:left + gw].reshape(gh * gw, -1)


def first_block_input(model, *args, **kwargs):
    seen = {}
    hook = model.dit.transformer_blocks[0].register_forward_pre_hook(
        lambda mod, a, kw: seen.update(hidden=kw["hidden_states"]), with_kwargs=True)
    try:
        model(*args, **kwargs)
    finally:
        hook.remove()
    return seen["hidden"]


def reference_forward(dit, target, refs, t, seq, pooled):
    """Independent forward with UniPic2's original token order [refs..., target], stock processors."""
    b = target.shape[0]
    tokens = [dit.pos_embed(r[None]).expand(b, -1, -1) for r in refs] + [dit.pos_embed(target)]
    hidden = torch.cat(tokens, dim=1)
    temb = dit.time_text_embed(t, pooled)
    ctx = dit.context_embedder(seq)
    for block in dit.transformer_blocks:
        ctx, hidden = block(hidden_states=hidden, encoder_hidden_states=ctx, temb=temb)
    hidden = dit.proj_out(dit.norm_out(hidden, temb))
    h, w = target.shape[-2] // 2, target.shape[-1] // 2
    hidden = hidden[:, -h * w:].reshape(target.shape[0], h, w, 2, 2, C)
    return torch.einsum("nhwpqc->nchpwq", hidden).reshape(target.shape[0], C, 2 * h, 2 * w)


@torch.no_grad()
def test_wraps_without_copying_and_keeps_the_stock_processors(stock, model):
    assert isinstance(model.dit, type(stock))
    assert list(model.dit.state_dict()) == list(stock.state_dict())  # diffusers key names kept
    blocks = model.dit.transformer_blocks
    assert blocks[0].attn2 is not None and blocks[-1].context_pre_only  # tiny mirrors the release layout
    assert {type(p) for p in model.dit.attn_processors.values()} == {type(stock.transformer_blocks[0].attn.processor)}


@torch.no_grad()
def test_no_references_equals_stock_sd3_forward(stock, model):
    x = rand(2, C, 8, 12)
    seq, pooled = context(2)
    t = torch.tensor([1000.0, 123.4])
    ours = model(x, t, seq, pooled)
    ref = stock(hidden_states=x, encoder_hidden_states=seq, pooled_projections=pooled, timestep=t).sample
    assert ours.shape == x.shape
    assert ref.abs().mean() > 0.1  # the tiny DiT is not zero-initialised
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # a scalar timestep broadcasts over the batch
    same = model(x, torch.tensor(500.0), seq, pooled)
    torch.testing.assert_close(same, model(x, torch.full((2,), 500.0), seq, pooled), atol=0, rtol=0)


@torch.no_grad()
def test_reference_tokens_follow_target_with_centre_cropped_positions(model):
    dit = model.dit
    x, same, small = rand(1, C, 8, 12), rand(C, 8, 12, seed=1), rand(C, 4, 6, seed=2)
    seq, pooled = context(1)
    hidden = first_block_input(model, x, torch.tensor([700.0]), seq, pooled, references=[[same, small]])
    n, ns = 4 * 6, 2 * 3
    assert hidden.shape[1] == n + n + ns  # [target, same-size ref, small ref]
    pos_target = hidden[0, :n] - conv_tokens(dit, x)[0]
    pos_same = hidden[0, n:2 * n] - conv_tokens(dit, same[None])[0]
    pos_small = hidden[0, 2 * n:] - conv_tokens(dit, small[None])[0]
    torch.testing.assert_close(pos_target, table_crop(dit, 4, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos_same, pos_target, atol=1e-5, rtol=0)  # same size: identical positions
    torch.testing.assert_close(pos_small, table_crop(dit, 2, 3), atol=1e-5, rtol=0)  # its own centred crop
    assert not torch.allclose(pos_small, table_crop(dit, 4, 6)[:ns], atol=1e-3)  # not top-left aligned


@torch.no_grad()
def test_token_order_is_irrelevant_no_offsets(stock, model):
    x = rand(2, C, 8, 8)
    refs = [rand(C, 8, 8, seed=3), rand(C, 6, 10, seed=4)]
    seq, pooled = context(2)
    t = torch.tensor([900.0, 250.0])
    ours = model(x, t, seq, pooled, references=refs)
    unipic_order = reference_forward(stock, x, refs, t, seq, pooled)
    torch.testing.assert_close(ours, unipic_order, atol=1e-5, rtol=0)


@torch.no_grad()
def test_only_target_is_unpatchified_and_references_matter(model):
    x = rand(2, C, 8, 12)
    seq, pooled = context(2)
    t = torch.tensor([600.0, 600.0])
    ref_a, ref_b = rand(C, 10, 6, seed=5), rand(C, 10, 6, seed=6)
    captured = {}
    hook = model.dit.proj_out.register_forward_hook(lambda m, a, out: captured.update(out=out))
    out_a = model(x, t, seq, pooled, references=[ref_a])
    hook.remove()
    tokens = captured["out"]
    assert tokens.shape[1] == 4 * 6 + 5 * 3  # the DiT saw target + reference tokens
    assert out_a.shape == x.shape  # ... but only the target came back
    target_only = torch.einsum("nhwpqc->nchpwq", tokens[:, :24].reshape(2, 4, 6, 2, 2, C)).reshape(2, C, 8, 12)
    torch.testing.assert_close(out_a, target_only, atol=0, rtol=0)
    out_b = model(x, t, seq, pooled, references=[ref_b])
    assert (out_a - out_b).abs().max() > 1e-3  # the reference conditions the target
    no_ref = model(x, t, seq, pooled)
    assert (out_a - no_ref).abs().max() > 1e-3


@torch.no_grad()
def test_shared_and_per_sample_references_agree(model):
    x = rand(2, C, 8, 8)
    seq, pooled = context(2)
    t = torch.tensor([400.0, 800.0])
    refs = [rand(C, 8, 8, seed=7), rand(C, 4, 4, seed=8)]
    shared = model(x, t, seq, pooled, references=refs)
    per_sample = model(x, t, seq, pooled, references=[refs, list(refs)])
    torch.testing.assert_close(shared, per_sample, atol=0, rtol=0)
    with pytest.raises(DeepGenInputError, match="per-sample"):
        model(x, t, seq, pooled, references=[refs])


@torch.no_grad()
def test_per_sample_references_must_give_equal_lengths(model):
    x = rand(2, C, 8, 8)
    seq, pooled = context(2)
    with pytest.raises(DeepGenInputError, match="differ in size"):
        model(x, torch.tensor([300.0, 700.0]), seq, pooled, references=[[rand(C, 8, 8, seed=10)], []])
    with pytest.raises(DeepGenInputError, match=r"\[B, C, h, w\]"):
        model(list(x), torch.tensor([300.0, 700.0]), seq, pooled)


def test_size_limits_and_shapes(model):
    limit = CFG["pos_embed_max_size"] * CFG["patch_size"]  # 128 latent px for the tiny table of 64
    seq, pooled = context(1)
    t = torch.tensor([500.0])
    px = 8 * limit
    with pytest.raises(DeepGenInputError, match=rf"{limit + 2}x8.*at most {px} px per side; the nearest size it "
                                                  rf"can make is 64x{px} px"):
        model(torch.zeros(1, C, limit + 2, 8), t, seq, pooled)
    with pytest.raises(DeepGenInputError, match=rf"reference 0 of sample 0.*{px} px"):
        model(torch.zeros(1, C, 8, 8), t, seq, pooled, references=[torch.zeros(C, 8, limit + 2)])
    with pytest.raises(DeepGenInputError, match="steps of 16 px; the nearest size it can make is 64x64 px"):
        model(torch.zeros(1, C, 7, 8), t, seq, pooled)
    with pytest.raises(DeepGenInputError, match="shape"):
        model(torch.zeros(1, 4, 8, 8), t, seq, pooled)
    with pytest.raises(DeepGenInputError, match="batch"):
        model(torch.zeros(2, C, 8, 8), torch.tensor([1.0, 1.0]), seq, pooled)
    with torch.no_grad():  # exactly at the limit is fine
        assert model(torch.zeros(1, C, limit, 2), t, seq, pooled).shape == (1, C, limit, 2)
