"""VLM LoRA name normalisation and merging (docs/inference.md#vlm-lora, #pitfall-17, #pitfall-18)."""
import copy

import pytest
import torch
from torch import nn

from deepgen_model.errors import DeepGenLoadError
from deepgen_model.keys import to_legacy
from deepgen_model.lora import iter_merged, normalize_lora_key, split_lora


def merge_lora(weights: dict, lora: dict, **kwargs) -> dict:
    """{weight key: merged tensor}; `weights` is left as it is."""
    return dict(iter_merged(weights, lora, **kwargs))


@torch.no_grad()
def merge_lora_into_model(model: nn.Module, lora: dict) -> int:
    """Merge into a loaded model's parameters (tied parameters see the change once). Returns #modules."""
    params = model.state_dict(keep_vars=True)
    merged = dict(iter_merged(params, lora))
    for key, value in merged.items():
        params[key].data = value
    return len(merged)


@pytest.mark.parametrize("key, want", [
    ("lmm.model.language_model.layers.3.self_attn.q_proj.lora_A.default.weight",
     ("model.layers.3.self_attn.q_proj", "A", False)),
    ("lmm.model.layers.3.mlp.down_proj.lora_B.default.weight", ("model.layers.3.mlp.down_proj", "B", False)),
    ("module.lmm.model.visual.blocks.1.attn.qkv.lora_A.default.weight", ("visual.blocks.1.attn.qkv", "A", False)),
    ("lmm.visual.merger.mlp.2.lora_B.default.weight", ("visual.merger.mlp.2", "B", False)),
    ("lmm.model.language_model.embed_tokens.lora_embedding_A.default", ("model.embed_tokens", "A", True)),
    ("lmm.model.embed_tokens.lora_embedding_B.default", ("model.embed_tokens", "B", True)),
    ("lmm.lm_head.lora_A.default.weight", ("lm_head", "A", False)),
    ("lmm.model.language_model.layers.0.mlp.up_proj.base_layer.lora_A.weight", ("model.layers.0.mlp.up_proj", "A", False)),
])
def test_normalize_lora_key(key, want):
    assert normalize_lora_key(key) == want


def test_other_adapter_rejected():
    with pytest.raises(DeepGenLoadError, match="adapter 'style'"):
        normalize_lora_key("lmm.model.layers.0.mlp.up_proj.lora_A.style.weight")


def test_split_lora(tiny):
    state = {"transformer.proj_out.weight": torch.zeros(1), **tiny.lora}
    lora, rest = split_lora(state)
    assert set(lora) == set(tiny.lora) and set(rest) == {"transformer.proj_out.weight"}


class Toy(nn.Module):
    """Legacy-named toy: model.embed_tokens, model.layers.0.mlp.up_proj, tied lm_head."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(10, 6)
        self.model.layers = nn.ModuleList([nn.Module()])
        self.model.layers[0].mlp = nn.Module()
        self.model.layers[0].mlp.up_proj = nn.Linear(6, 5)
        self.lm_head = nn.Linear(6, 10, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.lm_head.weight = self.model.embed_tokens.weight
        self.to(dtype)


def _toy_lora(r=3, seed=1, lm_head=True):
    g = torch.Generator().manual_seed(seed)
    lora = {
        "lmm.model.language_model.layers.0.mlp.up_proj.lora_A.default.weight": torch.randn(r, 6, generator=g),
        "lmm.model.language_model.layers.0.mlp.up_proj.lora_B.default.weight": torch.randn(5, r, generator=g),
        "lmm.model.language_model.embed_tokens.lora_embedding_A.default": torch.randn(r, 10, generator=g),
        "lmm.model.language_model.embed_tokens.lora_embedding_B.default": torch.randn(6, r, generator=g),
    }
    if lm_head:
        lora["lmm.lm_head.lora_A.default.weight"] = torch.randn(r, 6, generator=g)
        lora["lmm.lm_head.lora_B.default.weight"] = torch.randn(10, r, generator=g)
    return lora


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_math_fp32_then_cast_back(dtype):
    toy, lora = Toy(dtype), _toy_lora()
    w, e = toy.model.layers[0].mlp.up_proj.weight.detach().clone(), toy.model.embed_tokens.weight.detach().clone()
    n = merge_lora_into_model(toy, lora)
    assert n == 2  # lm_head skipped
    a, b = (lora[f"lmm.model.language_model.layers.0.mlp.up_proj.lora_{x}.default.weight"] for x in "AB")
    ea, eb = (lora[f"lmm.model.language_model.embed_tokens.lora_embedding_{x}.default"] for x in "AB")
    got_w, got_e = toy.model.layers[0].mlp.up_proj.weight, toy.model.embed_tokens.weight
    assert got_w.dtype == dtype and got_e.dtype == dtype
    assert torch.equal(got_w, (w.float() + 2.0 * (b @ a)).to(dtype))
    assert torch.equal(got_e, (e.float() + 2.0 * (eb @ ea).T).to(dtype))
    assert toy.lm_head.weight is toy.model.embed_tokens.weight


def test_lm_head_only_lora_changes_nothing():
    toy = Toy()
    before = {k: v.clone() for k, v in toy.state_dict().items()}
    lora = {k: v for k, v in _toy_lora().items() if "lm_head" in k}
    assert merge_lora_into_model(toy, lora) == 0
    assert all(torch.equal(before[k], v) for k, v in toy.state_dict().items())


def test_merge_on_plain_state_dict_is_not_in_place():
    toy = Toy()
    state = {k: v.detach() for k, v in toy.state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    merged = merge_lora(state, _toy_lora())
    assert set(merged) == {"model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"}
    assert all(torch.equal(before[k], state[k]) for k in state)


def test_tiny_vlm_merge_matches_fixture(tiny):
    vlm = copy.deepcopy(tiny.vlm_base)
    merge_lora_into_model(vlm, tiny.lora)
    got = {to_legacy(k): v for k, v in vlm.state_dict().items() if k != "lm_head.weight"}
    for k, want in tiny.vlm_merged_state.items():
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-6, msg=k)


def test_unmatched_incomplete_and_misshaped():
    lora = _toy_lora(lm_head=False)
    extra = {"lmm.model.language_model.layers.7.mlp.up_proj.lora_A.default.weight": torch.zeros(3, 6),
             "lmm.model.language_model.layers.7.mlp.up_proj.lora_B.default.weight": torch.zeros(5, 3)}
    with pytest.raises(DeepGenLoadError, match=r"model\.pt: 1 LoRA target\(s\) match no .*model\.layers\.7\.mlp\.up_proj"):
        merge_lora(Toy().state_dict(), {**lora, **extra}, source="model.pt")
    half = {k: v for k, v in lora.items() if "up_proj.lora_B" not in k}
    with pytest.raises(DeepGenLoadError, match=r"without both A and B.*model\.layers\.0\.mlp\.up_proj"):
        merge_lora(Toy().state_dict(), half)
    bad = dict(lora)
    bad["lmm.model.language_model.layers.0.mlp.up_proj.lora_B.default.weight"] = torch.zeros(4, 3)
    with pytest.raises(DeepGenLoadError, match=r"\(4, 6\) update but the weight model\.layers\.0\.mlp\.up_proj\.weight is \(5, 6\)"):
        merge_lora(Toy().state_dict(), bad)


@pytest.mark.parametrize("embedding", [False, True])
def test_the_merge_by_blocks_of_rows_equals_the_whole_matrix_formula(monkeypatch, embedding):
    """The merge forms its fp32 temporaries a block of rows at a time (the real embedding's would be ~3.5 GiB):
    bit-identical to W + s * B @ A formed whole, blocks that do not divide the rows included."""
    import deepgen_model.lora as lora_module

    monkeypatch.setattr(lora_module, "MERGE_ROWS", 7)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 24, generator=g).bfloat16()
    if embedding:  # A [r, vocab], B [hidden, r]
        lora = {"lmm.model.embed_tokens.lora_embedding_A.default": torch.randn(4, 50, generator=g),
                "lmm.model.embed_tokens.lora_embedding_B.default": torch.randn(24, 4, generator=g)}
        key = "model.embed_tokens.weight"
    else:
        lora = {"lmm.model.layers.0.mlp.up_proj.lora_A.default.weight": torch.randn(4, 24, generator=g),
                "lmm.model.layers.0.mlp.up_proj.lora_B.default.weight": torch.randn(50, 4, generator=g)}
        key = "model.layers.0.mlp.up_proj.weight"
    a, b = (lora[k] for k in sorted(lora))  # the A name sorts before the B name
    delta = (b @ a).T if embedding else b @ a
    want = (w.float() + 2.0 * delta).to(w.dtype)
    assert torch.equal(merge_lora({key: w}, lora)[key], want)


def test_merge_into_state_merges_in_place_with_the_same_values():
    """release.read_hf_weights hands its own writable tensors: the merge writes into them (no second copy of
    the VLM) and gives what the copying merge gives."""
    from deepgen_model.lora import merge_lora_into_state

    g = torch.Generator().manual_seed(1)
    state = {"model.embed_tokens.weight": torch.randn(30, 8, generator=g).bfloat16(),
             "model.layers.0.mlp.up_proj.weight": torch.randn(12, 8, generator=g).bfloat16()}
    lora = {"lmm.model.embed_tokens.lora_embedding_A.default": torch.randn(2, 30, generator=g),
            "lmm.model.embed_tokens.lora_embedding_B.default": torch.randn(8, 2, generator=g),
            "lmm.model.layers.0.mlp.up_proj.lora_A.default.weight": torch.randn(2, 8, generator=g),
            "lmm.model.layers.0.mlp.up_proj.lora_B.default.weight": torch.randn(12, 2, generator=g)}
    want = merge_lora(state, lora)
    pointers = {k: v.data_ptr() for k, v in state.items()}
    merged = merge_lora_into_state(state, lora)
    assert all(torch.equal(merged[k], want[k]) and merged[k].data_ptr() == pointers[k] for k in want)
