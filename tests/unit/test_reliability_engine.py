"""Reliability (issue 7) of the engine: per-layer interruption points, the long-prompt policy, and
loading errors that name the file and the key (both transformers legs)."""
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepgen_model import loading
from deepgen_model import vlm_loading
from deepgen_model.compat import text_config, vlm_parts
from deepgen_model.conditioning import TRAINED_PROMPT_TOKENS, empty_prompt_warning, encode, encode_steps
from deepgen_model.constants import selected_layers
from deepgen_model.errors import DeepGenInputError, DeepGenLoadError
from deepgen_model.scb import SCBConfig, SCBConnector


@pytest.fixture(scope="module")
def scb(tiny):
    b = SCBConnector(SCBConfig.from_state_dict(tiny.scb_state, tiny.scb_heads)).eval()
    b.load_state_dict(tiny.scb_state, strict=True)
    return b


class _Stop(Exception):
    pass


def _hooks(module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())


def test_layer_callback_runs_per_layer_and_can_stop_the_forward(tiny, scb):
    vlm = tiny.vlm_base
    hooks = _hooks(vlm)
    calls = []
    plain = encode(vlm, tiny.tokenizer, scb, "a cat", "")
    cond = encode(vlm, tiny.tokenizer, scb, "a cat", "", layer_callback=lambda: calls.append(1))
    torch.testing.assert_close(cond.seq, plain.seq, rtol=0, atol=0)  # observing changes nothing
    n_layers, scb_layers = len(vlm_parts(vlm)[1].layers), len(scb.connector.layers)
    # one per decoder layer run (the forward stops at 35), then one per SCB layer
    assert len(calls) == max(selected_layers(n_layers)) + scb_layers

    calls.clear()
    image = torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(0))
    encode(vlm, tiny.tokenizer, scb, "make it red", "", images=[image], max_side=64,
           layer_callback=lambda: calls.append(1))
    vit_blocks = len(vlm_parts(vlm)[0].blocks)
    assert len(calls) == vit_blocks + max(selected_layers(n_layers)) + scb_layers  # the ViT runs once per reference

    seen = []

    def stop_at_four():
        seen.append(1)
        if len(seen) == 4:
            raise _Stop

    with pytest.raises(_Stop):
        encode(vlm, tiny.tokenizer, scb, "a cat", "", layer_callback=stop_at_four)
    assert len(seen) == 4
    assert _hooks(vlm) == hooks  # every hook removed again, also after the exception

    scb_hooks, seen = _hooks(scb), []  # an interrupt inside the SCB: before its second layer

    def stop_in_the_scb():
        seen.append(1)
        if len(seen) == max(selected_layers(n_layers)) + 2:
            raise _Stop

    with pytest.raises(_Stop):
        encode(vlm, tiny.tokenizer, scb, "a cat", "", layer_callback=stop_in_the_scb)
    assert _hooks(vlm) == hooks and _hooks(scb) == scb_hooks


def test_prompt_beyond_the_vlm_context_is_refused_and_long_ones_are_kept(tiny, scb, caplog, monkeypatch):
    vlm, tok = tiny.vlm_base, tiny.tokenizer
    cfg = text_config(vlm)
    monkeypatch.setattr(cfg, "max_position_embeddings", 300)
    think = scb.meta_queries.shape[0]
    fits = "a " * (300 - think - 40)
    long = "a " * 400
    with pytest.raises(DeepGenInputError, match=r"^prompt is \d+ tokens .* context of 300 positions.*refused, not truncated"):
        encode(vlm, tok, scb, long, "")
    with pytest.raises(DeepGenInputError, match=r"^negative_prompt is \d+ tokens"):
        encode(vlm, tok, scb, "a cat", long)
    with pytest.raises(DeepGenInputError, match=r"^prompt 1 is"):
        encode(vlm, tok, scb, ["a cat", long], "")
    encode(vlm, tok, scb, fits, "")  # within the limit: encoded
    monkeypatch.undo()

    text = "a " * (TRAINED_PROMPT_TOKENS + 50)
    with caplog.at_level(logging.WARNING, logger="deepgen_model.conditioning"):
        cond = encode(vlm, tok, scb, text, "")
    assert "trained on prompts of at most 1024 tokens" in caplog.text
    n = len(tok(cond.prompt_text[0])["input_ids"])
    assert cond.seq.shape[1] == n + think  # nothing truncated
    # the same note travels with the conditioning, for the UI (the log alone reaches nobody)
    assert len(cond.warnings) == 1 and cond.warnings[0] in caplog.text
    assert cond.warnings[0].startswith(f"prompt is {n} tokens; DeepGen was trained on prompts of at most 1024")
    assert encode(vlm, tok, scb, "a cat", "").warnings == []


@pytest.mark.parametrize("references", [0, 2])
def test_progress_reports_every_stage_in_order(tiny, scb, references):
    """One step per ViT block of each reference, per decoder layer and per SCB layer: after the last
    decoder layer the bar keeps moving through the SCB (with real weights on a CPU that took ~40 s
    at 100 % for a long prompt)."""
    vlm = tiny.vlm_base
    hooks, seen = _hooks(vlm), []
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(40, 56, 3, generator=g) for _ in range(references)] or None
    plain = encode(vlm, tiny.tokenizer, scb, "a cat", "", images=images, max_side=64)
    cond = encode(vlm, tiny.tokenizer, scb, "a cat", "", images=images, max_side=64,
                  progress=lambda done, total: seen.append((done, total)))
    torch.testing.assert_close(cond.seq, plain.seq, rtol=0, atol=0)  # observing changes nothing
    visual, text_model = vlm_parts(vlm)
    total = (references * len(visual.blocks) + max(selected_layers(len(text_model.layers)))
             + len(scb.connector.layers))
    assert encode_steps(vlm, scb, references) == total
    assert seen == [(k, total) for k in range(1, total + 1)]
    assert _hooks(vlm) == hooks and _hooks(scb) == 0


# ------------------------------------------------------------------ loading errors name the file and the key

@pytest.fixture
def release_copy(tiny_layouts, tmp_path):
    dst = tmp_path / "release"
    shutil.copytree(tiny_layouts["diffusers"], dst)
    return dst


def _edit(path, key_pred, change):
    state = load_file(str(path))
    key = next(k for k in sorted(state) if key_pred(k))
    change(state, key)
    save_file(state, str(path), metadata={"format": "pt"})
    return key


def _vlm_shard(root, key_pred):
    return next(f for f in sorted((root / "vlm").glob("*.safetensors")) if any(key_pred(k) for k in load_file(str(f))))


def test_vlm_missing_tensor_is_named(release_copy):
    pred = lambda k: "layers.3.mlp.up_proj.weight" in k and "visual" not in k  # noqa: E731
    key = _edit(_vlm_shard(release_copy, pred), pred, lambda s, k: s.pop(k))
    with pytest.raises(DeepGenLoadError, match=r"layers\.3\.mlp\.up_proj\.weight") as err:
        vlm_loading.load_vlm(release_copy, dtype="fp32")
    assert str(release_copy / "vlm") in str(err.value), key


def test_vlm_misshaped_tensor_is_named(release_copy):
    pred = lambda k: "layers.3.mlp.up_proj.weight" in k and "visual" not in k  # noqa: E731
    _edit(_vlm_shard(release_copy, pred), pred, lambda s, k: s.__setitem__(k, torch.zeros(s[k].shape[0] + 1, s[k].shape[1])))
    with pytest.raises(DeepGenLoadError, match=r"mis-shaped tensors \(1\): .*layers\.3\.mlp\.up_proj\.weight"):
        vlm_loading.load_vlm(release_copy, dtype="fp32")


def test_truncated_vlm_shard_names_the_files(release_copy):
    shard = sorted((release_copy / "vlm").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DeepGenLoadError, match=shard.name):
        vlm_loading.load_vlm(release_copy, dtype="fp32")


def test_dit_missing_tensor_is_named(release_copy):
    f = release_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    key = _edit(f, lambda k: k.startswith("transformer_blocks.1.attn.add_k_proj"), lambda s, k: s.pop(k))
    with pytest.raises(DeepGenLoadError, match=r"missing tensors \(1\): " + key.replace(".", r"\.")):
        loading.load_dit(release_copy, dtype="fp32")


def test_an_empty_prompt_is_encoded_with_a_note(tiny, scb, caplog):
    """Blank prompts run (as the release does) but say why the picture follows no text; negatives may be empty."""
    image = torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.WARNING, logger="deepgen_model.conditioning"):
        t2i = encode(tiny.vlm_base, tiny.tokenizer, scb, " \n", "")
        edit = encode(tiny.vlm_base, tiny.tokenizer, scb, "", "", images=[image], max_side=64)
        both = encode(tiny.vlm_base, tiny.tokenizer, scb, ["a cat", ""], "")
    assert t2i.warnings == [empty_prompt_warning("prompt", "", edit=False)]
    assert t2i.warnings[0] == ("prompt is empty: DeepGen gets no description, so it draws nothing in particular; "
                               "write what you want")
    assert edit.warnings == [empty_prompt_warning("prompt", "", edit=True)] and "edit instruction" in edit.warnings[0]
    assert both.warnings == [empty_prompt_warning("prompt 1", "", edit=False)]
    assert t2i.warnings[0] in caplog.text
    assert encode(tiny.vlm_base, tiny.tokenizer, scb, "a cat", "").warnings == []


def test_cfg_note_only_above_the_authors_range():
    from deepgen_model.inputs import cfg_warning

    assert [cfg_warning(c) for c in (0.0, 1.0, 4.0, 7.5, 10.0)] == [None] * 5
    assert cfg_warning(100.0) == ("cfg is 100, far above the 3.5-7.5 the authors use (4.0 by default): expect harsh, "
                                  "oversaturated, burnt-looking pictures; try 4")
