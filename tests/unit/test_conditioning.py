"""encode(): prompts (+ references) -> DiT conditioning (docs/inference.md#vlm-forward, #editing)."""
import copy
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepgen_model.conditioning import DeepGenConditioning, encode
from deepgen_model.constants import EDIT_NEGATIVE
from deepgen_model.errors import DeepGenInputError
from deepgen_model.images import resized_uint8, to_signed, vit_inputs
from deepgen_model.prompts import edit_prompt, t2i_prompt, tokenize_pair
from deepgen_model.scb import SCBConfig, SCBConnector
from deepgen_model.vlm import stacked_hidden_states
from reference_images import resize_reference

REPO = Path(__file__).resolve().parents[2]


def _scb(state, heads):
    b = SCBConnector(SCBConfig.from_state_dict(state, heads)).eval()
    b.load_state_dict(state, strict=True)
    return b


@pytest.fixture(scope="module")
def scb(tiny):
    return _scb(tiny.scb_state, tiny.scb_heads)


def _images():
    g = torch.Generator().manual_seed(7)
    return [torch.rand(60, 100, 3, generator=g), torch.rand(64, 64, 3, generator=g)]  # -> 96x64 and 64x64 at 96


def test_t2i_rows_strings_and_composition(tiny, scb):
    prompts = ["a red cat", "a photo of a dog running on the beach at sunset"]
    cond = encode(tiny.vlm_base, tiny.tokenizer, scb, prompts, "")
    assert isinstance(cond, DeepGenConditioning) and cond.batch_size == 2
    texts = [t2i_prompt(p) for p in prompts] + [t2i_prompt("")] * 2
    assert cond.prompt_text == texts and cond.references == []
    ids, mask = tokenize_pair(tiny.tokenizer, texts[:2], texts[2:])
    assert cond.seq.shape == (4, ids.shape[1] + 128, scb.config.joint_attention_dim)
    assert cond.pooled.shape == (4, scb.config.pooled_projection_dim)
    with torch.no_grad():
        seq, pooled = scb(stacked_hidden_states(tiny.vlm_base, tiny.tokenizer, scb.meta_queries, ids, mask))
    assert torch.equal(cond.seq, seq) and torch.equal(cond.pooled, pooled)
    assert torch.equal(cond.positive()[0], seq[:2]) and torch.equal(cond.negative()[1], pooled[2:])
    assert not torch.equal(cond.pooled[0], cond.pooled[1])


def test_edit_references_prompts_and_splice(tiny, scb):
    images = _images()
    cond = encode(tiny.vlm_base, tiny.tokenizer, scb, "make the sky purple", EDIT_NEGATIVE, images, max_side=96)
    refs = [resize_reference(im, 96) for im in images]
    assert [tuple(r.shape) for r in cond.references] == [(3, 64, 96), (3, 64, 64)]
    assert all(torch.equal(a, b) for a, b in zip(cond.references, refs))
    # the same resize, as the uint8 pixels a caller's own VAE encodes (DeepGen Edit Encode): not resized again
    assert all(np.array_equal(p, resized_uint8(im, 96)) for p, im in zip(cond.reference_pixels, images))
    assert all(torch.equal(to_signed(p), r) for p, r in zip(cond.reference_pixels, cond.references))
    counts = [6, 4]  # (64/32)*(96/32), (64/32)*(64/32)
    assert cond.prompt_text == [edit_prompt("make the sky purple", counts), edit_prompt(EDIT_NEGATIVE, counts)]
    ids, mask = tokenize_pair(tiny.tokenizer, cond.prompt_text[:1], cond.prompt_text[1:])
    vit = [vit_inputs(r) for r in refs]
    with torch.no_grad():
        stacked = stacked_hidden_states(tiny.vlm_base, tiny.tokenizer, scb.meta_queries, ids, mask,
                                        [v[0] for v in vit] * 2, torch.cat([v[1] for v in vit] * 2))
        seq, pooled = scb(stacked)
    assert cond.seq.shape == seq.shape == (2, ids.shape[1] + 128, scb.config.joint_attention_dim)
    assert torch.equal(cond.seq, seq) and torch.equal(cond.pooled, pooled)
    # both branches see the references: changing one reference moves the negative too
    other = encode(tiny.vlm_base, tiny.tokenizer, scb, "make the sky purple", EDIT_NEGATIVE,
                   [images[0], 1 - images[1]], max_side=96)
    assert (other.pooled - cond.pooled).abs().amax(dim=1).gt(1e-4).all()


def test_batch_of_edits_shares_references(tiny, scb):
    images = _images()[1:]
    cond = encode(tiny.vlm_base, tiny.tokenizer, scb, ["add a hat", "add a hat"], ["", ""], images, max_side=64)
    assert cond.seq.shape[0] == 4 and len(cond.references) == 1
    torch.testing.assert_close(cond.seq[0], cond.seq[1], rtol=0, atol=0)
    torch.testing.assert_close(cond.seq[2], cond.seq[3], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(images=[]), "images"),
    (dict(images=[torch.rand(32, 32)]), "IMAGE"),
    (dict(images=torch.rand(1, 32, 32, 3)), "list"),
    (dict(max_side=100), "max_side"),
    (dict(negative_prompts=["a", "b", "c"]), "negative"),
    (dict(prompts=[]), "prompts"),
])
def test_bad_inputs_raise(tiny, scb, kwargs, match):
    args = dict(prompts=["a", "b"], negative_prompts="", images=None, max_side=512) | kwargs
    with pytest.raises(DeepGenInputError, match=match):
        encode(tiny.vlm_base, tiny.tokenizer, scb, **args)


def test_runs_in_the_modules_dtype(tiny, scb):
    vlm = copy.deepcopy(tiny.vlm_base).to(torch.bfloat16)
    b16 = copy.deepcopy(scb).to(torch.bfloat16)
    cond = encode(vlm, tiny.tokenizer, b16, "a red cat", "", _images()[1:], max_side=64)
    assert cond.seq.dtype == cond.pooled.dtype == torch.bfloat16
    assert torch.isfinite(cond.seq).all() and cond.references[0].dtype == torch.float32
    mixed = encode(vlm, tiny.tokenizer, scb, "a red cat", "", None)  # bf16 VLM into an fp32 SCB
    assert mixed.seq.dtype == torch.float32


def test_manual_cast_keeps_the_compute_dtype(tiny, scb):
    """bf16 storage + fp32 compute (the CPU path) must not round activations to bf16 in between."""
    precision = pytest.importorskip("deepgen_model.precision")
    stored = copy.deepcopy(tiny.vlm_base).to(torch.bfloat16)
    stored_scb = copy.deepcopy(scb).to(torch.bfloat16)
    reference = encode(copy.deepcopy(stored).float(), tiny.tokenizer, copy.deepcopy(stored_scb).float(), "a red cat", "")
    precision.apply_manual_cast(stored, torch.float32)
    precision.apply_manual_cast(stored_scb, torch.float32)
    cond = encode(stored, tiny.tokenizer, stored_scb, "a red cat", "")
    assert cond.seq.dtype == torch.float32
    torch.testing.assert_close(cond.seq, reference.seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond.pooled, reference.pooled, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# transformers 4.56 vs 5.x: the same folder must give the same conditioning


def _run_conditioning(root: str, out: str) -> None:
    """Loads the diffusers-layout folder with plain transformers and runs T2I + edit; saves the results."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, __version__

    root = Path(root)
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(root / "vlm"), attn_implementation="sdpa").eval()
    state = load_file(str(root / "connector" / "model.safetensors"))
    heads = json.loads((root / "connector" / "config.json").read_text())["num_attention_heads"]
    scb = _scb(state, heads)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(60, 100, 3, generator=g), torch.rand(40, 40, 3, generator=g)]
    t2i = encode(vlm, tok, scb, ["a red cat", "a photo of a dog running on the beach"], "")
    edit = encode(vlm, tok, scb, "make the sky purple", EDIT_NEGATIVE, images, max_side=96)
    torch.save({"version": __version__, "dtype": str(vlm.dtype), "t2i": (t2i.seq, t2i.pooled),
                "edit": (edit.seq, edit.pooled)}, out)


def test_transformers_4_and_5_agree(tiny_layouts, tmp_path):
    if importlib.metadata.version("transformers").startswith("4."):
        pytest.skip("runs from the transformers 5.x leg (it starts the 4.x leg itself)")
    tf4 = Path(os.environ.get("DEEPGEN_HOME", "/work/dghome")) / "tf4"
    if not (tf4 / "transformers").is_dir():
        pytest.skip(f"no transformers-4 overlay at {tf4} (set DEEPGEN_HOME)")
    root = str(tiny_layouts["diffusers"])
    mine, theirs = tmp_path / "tf5.pt", tmp_path / "tf4.pt"
    _run_conditioning(root, str(mine))
    code = ("import importlib.util, sys; sys.path.insert(0, sys.argv[1]);"
            "s = importlib.util.spec_from_file_location('tc', sys.argv[2]); m = importlib.util.module_from_spec(s);"
            "s.loader.exec_module(m); m._run_conditioning(sys.argv[3], sys.argv[4])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tf4), str(REPO), str(REPO / "tests")]))  # + shared test code
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), __file__, root, str(theirs)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = torch.load(mine, weights_only=True), torch.load(theirs, weights_only=True)
    assert a["version"].startswith("5.") and b["version"].startswith("4."), (a["version"], b["version"])
    assert a["dtype"] == b["dtype"] == "torch.float32"
    for key in ("t2i", "edit"):
        for x, y in zip(a[key], b[key]):
            assert x.shape == y.shape
            assert (x - y).abs().max() < 1e-6, (key, (x - y).abs().max())
