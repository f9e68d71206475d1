"""VLM forward for the SCB
(docs/inference.md#layer-selection, #vlm-forward, #pitfall-1, #pitfall-2, #pitfall-6, #pitfall-7, #pitfall-8)."""
import copy

import pytest
import torch

from deepgen_model import compat
from deepgen_model.constants import selected_layers
from deepgen_model.errors import DeepGenInputError
from deepgen_model.images import image_token_count, vit_inputs
from deepgen_model.prompts import edit_prompt, t2i_prompt, tokenize_pair
from deepgen_model.vlm import fa2_pad_emulation, stacked_hidden_states

LAYERS = [35, 29, 23, 17, 11, 5]


@pytest.fixture(scope="module")
def vlm(tiny):
    return tiny.vlm_base


@pytest.fixture(scope="module")
def eager_vlm(tiny):
    m = copy.deepcopy(tiny.vlm_base)
    m.set_attn_implementation("eager")
    return m


@pytest.fixture(scope="module")
def pair(tiny):
    """A long positive and the official empty negative: the negative row is left-padded."""
    pos = t2i_prompt("a photo of a dog running on the beach at sunset, highly detailed.")
    return tokenize_pair(tiny.tokenizer, [pos], [t2i_prompt("")])


def _inputs(tiny, m, ids, mask):
    """Independent assembly of the text-only forward inputs (embeddings + think tokens + mRoPE)."""
    q = tiny.scb_state["meta_queries"]
    _, text = compat.vlm_parts(m)
    b = ids.shape[0]
    emb = torch.cat([text.get_input_embeddings()(ids), q[None].expand(b, -1, -1)], dim=1)
    ext_ids = torch.cat([ids, ids.new_zeros(b, q.shape[0])], 1)
    ext_mask = torch.cat([mask, mask.new_ones(b, q.shape[0])], 1)
    pos = compat.rope_index(m, ext_ids, None, ext_mask, tiny.token_ids["<|image_pad|>"])
    return text, emb, ext_mask, pos


def _full_hidden_states(text, emb, mask, pos):
    with torch.no_grad():
        return text(inputs_embeds=emb, attention_mask=mask, position_ids=pos, output_hidden_states=True).hidden_states


def test_compat_parts_and_config(vlm):
    visual, text = compat.vlm_parts(vlm)
    assert type(visual).__name__ == "Qwen2_5_VisionTransformerPretrainedModel"
    assert type(text).__name__ == "Qwen2_5_VLTextModel"
    cfg = compat.text_config(vlm)
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (64, 36)
    assert list(selected_layers(cfg.num_hidden_layers)) == LAYERS


def test_rope_index_text_and_image_rules(tiny, vlm):
    t = tiny.token_ids
    pad, img = t["<|endoftext|>"], t["<|image_pad|>"]
    # docs/inference.md#vlm-forward example: [pad, pad, <im_start>, x, y, <vision_start>, 2x2 image, <vision_end>, z] + 2 think tokens
    ids = torch.tensor([[pad, pad, t["<|im_start|>"], 70, 71, t["<|vision_start|>"], img, img, img, img,
                         t["<|vision_end|>"], 72, 0, 0]])
    mask = torch.tensor([[0, 0] + [1] * 12], dtype=torch.bool)
    pos = compat.rope_index(vlm, ids, torch.tensor([[1, 4, 4]]), mask, img)
    assert pos.shape == (3, 1, 14)
    assert pos[0, 0, 2:].tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 6, 7, 8, 9]
    assert pos[1, 0, 2:].tolist() == [0, 1, 2, 3, 4, 4, 5, 5, 6, 7, 8, 9]
    assert pos[2, 0, 2:].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9]
    text_only = compat.rope_index(vlm, ids.masked_fill(ids == img, 70), None, mask, img)
    assert text_only[:, 0, 2:].tolist() == [list(range(12))] * 3  # think tokens continue the count


def test_early_stop_equals_full_forward_hidden_states(tiny, vlm, pair):
    ids, mask = pair
    stacked = stacked_hidden_states(vlm, tiny.tokenizer, tiny.scb_state["meta_queries"], ids, mask)
    assert stacked.shape == (2, ids.shape[1] + 128, 6 * 64)
    text, emb, ext_mask, pos = _inputs(tiny, vlm, ids, mask)
    with fa2_pad_emulation(text, ext_mask):
        hs = _full_hidden_states(text, emb, ext_mask, pos)
    assert len(hs) == 37
    assert torch.equal(stacked, torch.cat([hs[k] for k in LAYERS], dim=-1))
    assert not torch.equal(hs[36], hs[35])  # index 36 (post-norm) is a different tensor and is not used


def test_layer_36_and_final_norm_never_run(tiny, vlm, pair):
    _, text = compat.vlm_parts(vlm)
    calls = []
    handles = [m.register_forward_hook(lambda *a, n=n: calls.append(n)) for n, m in
               (("layer36", text.layers[35]), ("norm", text.norm), ("layer35", text.layers[34]))]
    try:
        stacked_hidden_states(vlm, tiny.tokenizer, tiny.scb_state["meta_queries"], *pair)
    finally:
        for h in handles:
            h.remove()
    assert calls == ["layer35"]


def test_pad_queries_get_zero_attention_output(tiny, vlm, pair):
    ids, mask = pair
    n_pad = int((~mask[1]).sum())
    _, text = compat.vlm_parts(vlm)
    seen = []
    handles = [layer.self_attn.o_proj.register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
               for layer in text.layers]
    try:
        stacked_hidden_states(vlm, tiny.tokenizer, tiny.scb_state["meta_queries"], ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == 35
    for x, out in seen:
        assert x[1, :n_pad].eq(0).all() and out[1, :n_pad].eq(0).all()
        assert x[1, n_pad:].abs().amax(-1).gt(0).all() and x[0].abs().amax(-1).gt(0).all()


def test_eager_and_sdpa_agree_only_with_the_emulation(tiny, vlm, eager_vlm, pair):
    ids, mask = pair
    n_pad = int((~mask[1]).sum())
    q = tiny.scb_state["meta_queries"]
    a = stacked_hidden_states(vlm, tiny.tokenizer, q, ids, mask)
    b = stacked_hidden_states(eager_vlm, tiny.tokenizer, q, ids, mask)
    assert torch.equal(a[1, :n_pad], b[1, :n_pad])  # pad rows: attention 0, MLP path only
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # real rows: float summation order only
    # without the emulation eager lets pad queries attend to everything: pad rows differ
    plain = [torch.cat([hs[k] for k in LAYERS], -1) for hs in
             (_full_hidden_states(*_inputs(tiny, m, ids, mask)) for m in (vlm, eager_vlm))]
    assert (plain[0][1, :n_pad] - plain[1][1, :n_pad]).abs().max() > 1e-2
    torch.testing.assert_close(plain[1][1, n_pad:], b[1, n_pad:], rtol=1e-4, atol=1e-4)  # real rows unaffected


def test_real_rows_of_a_padded_prompt_equal_the_prompt_alone(tiny, vlm, pair):
    ids, mask = pair
    n_pad = int((~mask[1]).sum())
    q = tiny.scb_state["meta_queries"]
    both = stacked_hidden_states(vlm, tiny.tokenizer, q, ids, mask)
    alone = stacked_hidden_states(vlm, tiny.tokenizer, q, ids[1:, n_pad:], mask[1:, n_pad:])
    torch.testing.assert_close(both[1:, n_pad:], alone, rtol=1e-4, atol=1e-4)
    assert (both[1, :n_pad] - both[1, n_pad:n_pad + 1]).abs().max() > 0  # pads are real positions too


def _refs():
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 64, 96, generator=g) * 2 - 1]


def test_image_embeddings_land_on_image_pads_positive_rows_first(tiny, vlm):
    tok, q = tiny.tokenizer, tiny.scb_state["meta_queries"]
    refs = _refs()
    vit = [vit_inputs(r) for r in refs]
    counts = [image_token_count(r.shape[1], r.shape[2]) for r in refs]
    ids, mask = tokenize_pair(tok, [edit_prompt("make the sky purple", counts)], [edit_prompt("", counts)])
    pvs = [pv for pv, _ in vit] * 2
    grids = torch.cat([g for _, g in vit] * 2)
    _, text = compat.vlm_parts(vlm)
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["hidden_states"]

    h = text.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        stacked = stacked_hidden_states(vlm, tok, q, ids, mask, pvs, grids)
    finally:
        h.remove()
    x = captured["x"]
    assert stacked.shape == (2, ids.shape[1] + 128, 384) and x.shape == (2, ids.shape[1] + 128, 64)
    with torch.no_grad():
        visual = compat.vlm_parts(vlm)[0]
        per_ref = []
        for pv, grid in vit:
            out = visual(pv, grid_thw=grid)
            per_ref.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
        expected_img = torch.cat(per_ref)
        is_img = ids == tiny.token_ids["<|image_pad|>"]
        t = ids.shape[1]
        for row in range(2):
            assert is_img[row].sum() == sum(counts) == expected_img.shape[0]
            torch.testing.assert_close(x[row, :t][is_img[row]], expected_img, rtol=0, atol=0)
            # every other prompt position (pads included) holds embed_tokens(id); think tokens are meta_queries
            torch.testing.assert_close(x[row, :t][~is_img[row]], text.embed_tokens(ids[row][~is_img[row]]))
            assert torch.equal(x[row, t:], q)
    pad = tiny.token_ids["<|endoftext|>"]
    assert ids[1, 0] == pad and torch.equal(x[1, 0], text.embed_tokens.weight[pad])


def test_image_token_count_mismatch_raises(tiny, vlm):
    refs = _refs()
    pv, grid = vit_inputs(refs[0])
    ids, mask = tokenize_pair(tiny.tokenizer, [edit_prompt("x", [3])], [edit_prompt("", [3])])
    with pytest.raises(DeepGenInputError, match="image"):
        stacked_hidden_states(vlm, tiny.tokenizer, tiny.scb_state["meta_queries"], ids, mask, [pv, pv],
                              torch.cat([grid, grid]))
    with pytest.raises(DeepGenInputError):
        stacked_hidden_states(vlm, tiny.tokenizer, tiny.scb_state["meta_queries"], ids, mask)


def _hook_count(m):
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())


def test_hooks_are_removed_even_on_error(tiny, vlm, pair):
    before = _hook_count(vlm)
    stacked_hidden_states(vlm, tiny.tokenizer, tiny.scb_state["meta_queries"], *pair)
    assert _hook_count(vlm) == before
    _, text = compat.vlm_parts(vlm)

    def boom(*_):
        raise KeyError("boom")

    h = text.layers[7].register_forward_pre_hook(boom)
    try:
        with pytest.raises(KeyError):
            stacked_hidden_states(vlm, tiny.tokenizer, tiny.scb_state["meta_queries"], *pair)
    finally:
        h.remove()
    assert _hook_count(vlm) == before
