"""Loading every release layout (docs/inference.md#checkpoints): equality across layouts, strictness, safety."""
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepgen_model import loading
from deepgen_model import vlm_loading
from deepgen_model.release import Release, detect_layout, load_native_state
from deepgen_model.errors import DeepGenLoadError
from deepgen_model.keys import to_legacy

REPO = Path(__file__).resolve().parents[2]


def _legacy(model):
    return {to_legacy(k): v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def _assert_state_close(got: dict, want: dict, atol=1e-6):
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].float(), want[k].float(), rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def vlms(tiny_layouts):
    """The VLM as loaded from the diffusers release and from model.pt with both LoRA namings."""
    out = {"diffusers": vlm_loading.load_vlm(tiny_layouts["diffusers"])}
    for name in ("native_lora_new", "native_lora_legacy"):
        out[name] = vlm_loading.load_vlm(Release.open(tiny_layouts[name], vlm_base=tiny_layouts["qwen"]))
    return out


def test_detect_layout(tiny_layouts, tmp_path):
    assert detect_layout(tiny_layouts["diffusers"]) == "diffusers"
    assert detect_layout(tiny_layouts["native"]) == "native"  # the model.pt file
    assert detect_layout(tiny_layouts["native"].parent) == "native"  # its folder
    (tmp_path / "deepgen_dit.safetensors").write_bytes(b"")
    assert detect_layout(tmp_path) == "converted"
    with pytest.raises(DeepGenLoadError, match="not a DeepGen 1.0 folder"):
        detect_layout(tiny_layouts["qwen"])
    with pytest.raises(DeepGenLoadError, match="does not exist"):
        detect_layout(tmp_path / "nope")


def test_vlm_diffusers_equals_base_plus_lora_in_both_namings(tiny, vlms):
    want = tiny.vlm_merged_state
    for name, (vlm, _) in vlms.items():
        _assert_state_close(_legacy(vlm), want)
    base = tiny.vlm_base.state_dict()
    q = "model.language_model.layers.3.self_attn.q_proj.weight"
    assert not torch.allclose(vlms["native_lora_new"][0].state_dict()[q], base[q])  # the LoRA did something


def test_lm_head_lora_skipped_and_embedding_gets_only_its_own_lora(tiny, vlms):
    vlm = vlms["native_lora_new"][0]
    emb = vlm.get_input_embeddings().weight
    a = tiny.lora["lmm.model.language_model.embed_tokens.lora_embedding_A.default"]
    b = tiny.lora["lmm.model.language_model.embed_tokens.lora_embedding_B.default"]
    base = tiny.vlm_base.get_input_embeddings().weight
    torch.testing.assert_close(emb, base + 2.0 * (b @ a).T, rtol=0, atol=1e-6)
    assert vlm.get_output_embeddings().weight is emb  # tied, never modified separately


def test_tokenizer_and_vlm_forward(tiny, vlms):
    vlm, tok = vlms["diffusers"]
    for t, i in tiny.token_ids.items():
        assert tok.convert_tokens_to_ids(t) == i
    ids = tok(["Generate an image: a red cat"], return_tensors="pt").input_ids
    assert ids.tolist() == tiny.tokenizer(["Generate an image: a red cat"], return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        out = vlm.model.language_model(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == 37 and torch.isfinite(out.last_hidden_state).all()


def test_native_without_lora_is_stock_qwen_with_warning(tiny, tiny_layouts, caplog):
    with caplog.at_level(logging.WARNING, logger="deepgen_model.release"):
        vlm, _ = vlm_loading.load_vlm(Release.open(tiny_layouts["native"], vlm_base=tiny_layouts["qwen"]))
    assert "no VLM LoRA" in caplog.text
    _assert_state_close(_legacy(vlm), {to_legacy(k): v for k, v in tiny.vlm_base.state_dict().items()
                                       if k != "lm_head.weight"}, atol=0)


def test_native_vlm_needs_base_path(tiny_layouts):
    with pytest.raises(DeepGenLoadError, match="set vlm_base to"):
        vlm_loading.load_vlm(tiny_layouts["native_lora_new"])


def test_release_without_vlm_folder(tiny_layouts, tmp_path, caplog):
    root = tmp_path / "old-release"
    shutil.copytree(tiny_layouts["diffusers"], root, ignore=shutil.ignore_patterns("vlm"))
    with pytest.raises(DeepGenLoadError, match=r"old-release has no vlm/ folder.*set vlm_base to"):
        vlm_loading.load_vlm(root)
    with caplog.at_level(logging.WARNING, logger="deepgen_model.release"):
        vlm, tok = vlm_loading.load_vlm(Release.open(root, vlm_base=tiny_layouts["qwen"]))
    assert "WITHOUT the DeepGen LoRA" in caplog.text and tok is not None


def test_vlm_dtype_and_attention(tiny_layouts):
    vlm, _ = vlm_loading.load_vlm(Release.open(tiny_layouts["native_lora_new"], vlm_base=tiny_layouts["qwen"]), dtype="bf16",
                              attn_implementation="eager")
    assert {p.dtype for p in vlm.parameters()} == {torch.bfloat16}
    assert vlm.config._attn_implementation == "eager"
    with pytest.raises(DeepGenLoadError, match="not supported"):
        vlm_loading.load_vlm(tiny_layouts["diffusers"], attn_implementation="xformers")
    with pytest.raises(DeepGenLoadError, match="not supported"):
        vlm_loading.load_vlm(tiny_layouts["diffusers"], quantization="int3")


def test_flash_attention_without_package(tiny_layouts):
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    with pytest.raises(DeepGenLoadError, match="pip install flash-attn"):
        vlm_loading.load_vlm(tiny_layouts["diffusers"], attn_implementation="flash_attention_2")


def test_dit_native_overrides_unipic2_base(tiny, tiny_layouts):
    dit = loading.load_dit(Release.open(tiny_layouts["native"], dit_base=tiny_layouts["unipic2"]))
    got, want, base = dit.state_dict(), tiny.dit.state_dict(), tiny.dit_base.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(got["proj_out.weight"], base["proj_out.weight"])
    release = loading.load_dit(tiny_layouts["diffusers"]).state_dict()
    assert all(torch.equal(release[k], want[k]) for k in want)


def test_dit_native_missing_and_misshaped_tensor(tiny_layouts, tmp_path):
    state = load_native_state(tiny_layouts["native"])
    broken = dict(state)
    del broken["transformer.proj_out.weight"]
    torch.save(broken, tmp_path / "model.pt")
    with pytest.raises(DeepGenLoadError, match=r"model\.pt.*missing tensors \(1\): proj_out\.weight"):
        loading.load_dit(Release.open(tmp_path / "model.pt", dit_base=tiny_layouts["unipic2"]))
    broken = dict(state)
    broken["transformer.context_embedder.weight"] = torch.zeros(3, 3)
    torch.save(broken, tmp_path / "model.pt")
    with pytest.raises(DeepGenLoadError, match=r"mis-shaped tensors \(1\): context_embedder\.weight \(3, 3\)"):
        loading.load_dit(Release.open(tmp_path / "model.pt", dit_base=tiny_layouts["unipic2"]))


def test_scb_identical_across_layouts(tiny, tiny_layouts):
    release = loading.load_scb(tiny_layouts["diffusers"])
    assert release.config.num_attention_heads == tiny.scb_heads  # from connector/config.json
    native = loading.load_scb(tiny_layouts["native"])  # no config: the released 32 heads (tiny uses 32 too)
    assert tiny.scb_heads == 32 and native.config == release.config
    for scb in (release, native):
        sd = scb.state_dict()
        assert set(sd) == set(tiny.scb_state) and len(sd) == 103
        assert all(torch.equal(sd[k], tiny.scb_state[k]) for k in sd)


def test_scb_head_count_must_fit(tiny_layouts):
    with pytest.raises(DeepGenLoadError, match=r"model\.pt: connector width 64 is not divisible by 5 heads"):
        loading.load_scb(tiny_layouts["native"], num_attention_heads=5)


def _connector_release(tmp_path, tiny, state):
    root = tmp_path / "release"
    (root / "connector").mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    save_file(state, str(root / "connector" / "model.safetensors"))
    (root / "connector" / "config.json").write_text(json.dumps(tiny.connector_config))
    return root


def test_scb_missing_unexpected_misshaped(tiny, tmp_path):
    state = {k: v.clone() for k, v in tiny.scb_state.items()}
    del state["connector.layers.4.mlp.fc2.bias"]
    state["connector.final_norm.weight"] = torch.zeros(1)
    h = state["connector.layers.2.self_attn.q_proj.weight"].shape[0]
    state["connector.layers.2.self_attn.q_proj.weight"] = torch.zeros(h, h - 1)
    root = _connector_release(tmp_path, tiny, state)
    with pytest.raises(DeepGenLoadError) as e:
        loading.load_scb(root)
    msg = str(e.value)
    assert "connector/model.safetensors" in msg
    assert "missing tensors (1): connector.layers.4.mlp.fc2.bias" in msg
    assert "unexpected tensors (1): connector.final_norm.weight" in msg
    assert f"connector.layers.2.self_attn.q_proj.weight ({h}, {h - 1}) (expected ({h}, {h}))" in msg


def test_scb_without_shape_keys(tiny, tmp_path):
    state = {k: v for k, v in tiny.scb_state.items() if k != "meta_queries"}
    with pytest.raises(DeepGenLoadError, match="missing tensors.*meta_queries"):
        loading.load_scb(_connector_release(tmp_path, tiny, state))


def test_vae_and_scheduler(tiny, tiny_layouts):
    for vae in (loading.load_vae(tiny_layouts["diffusers"]),
                loading.load_vae(Release.open(tiny_layouts["native"], dit_base=tiny_layouts["unipic2"]))):
        assert all(torch.equal(v, tiny.vae.state_dict()[k]) for k, v in vae.state_dict().items())
    with pytest.raises(DeepGenLoadError, match="set dit_base to"):
        loading.load_vae(tiny_layouts["native"])
    assert loading.load_scheduler_config(tiny_layouts["diffusers"])["shift"] == tiny.scheduler_config["shift"]
    from_base = loading.load_scheduler_config(Release.open(tiny_layouts["native"], dit_base=tiny_layouts["unipic2"]))
    assert from_base["max_shift"] == tiny.scheduler_config["max_shift"]
    fallback = loading.load_scheduler_config(tiny_layouts["native"])
    assert fallback["shift"] == 3.0 and fallback["use_dynamic_shifting"] is False and "max_shift" not in fallback


def test_dit_dtype(tiny_layouts):
    dit = loading.load_dit(tiny_layouts["diffusers"], dtype=torch.bfloat16)
    assert {t.dtype for t in dit.state_dict().values()} == {torch.bfloat16}
    assert {t.dtype for t in loading.load_dit(tiny_layouts["diffusers"]).state_dict().values()} == {torch.float32}


def test_native_wrapped_state_dict(tiny, tiny_layouts, tmp_path):
    state = load_native_state(tiny_layouts["native"])
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "model.pt")
    assert set(load_native_state(tmp_path)) == set(state)
    torch.save([1, 2], tmp_path / "model.pt")
    with pytest.raises(DeepGenLoadError, match="not a dict of tensors"):
        load_native_state(tmp_path / "model.pt")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling with weights_only=False would create the file
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_refused(tmp_path, writer):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "model.pt"
    payload = {"transformer.x": torch.zeros(1), "evil": _Evil(str(target))}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DeepGenLoadError, match=r"model\.pt was refused"):
        load_native_state(path)
    with pytest.raises(DeepGenLoadError, match=r"model\.pt was refused"):
        loading.load_dit(path)
    assert not target.exists()


def test_bitsandbytes_not_imported_without_quantization(tiny_layouts):
    """Our code imports bitsandbytes only for quantization. (diffusers' model classes import it on their
    own whenever it is installed, so the DiT/VAE loaders are not part of this check.)"""
    code = (
        "import sys; sys.path.append(sys.argv[1]); from deepgen_model import loading as L, vlm_loading as V\n"
        "from deepgen_model.release import Release\n"
        "d, n, q = sys.argv[2], sys.argv[3], sys.argv[4]\n"
        "V.load_vlm(d); V.load_vlm(Release.open(n, vlm_base=q)); L.load_scb(d)\n"
        "print('BNB-plain', 'bitsandbytes' in sys.modules)\n"
        "V.load_vlm(d, quantization='8bit')\n"
        "print('BNB-8bit', 'bitsandbytes' in sys.modules)\n")
    args = [str(REPO), str(tiny_layouts["diffusers"]), str(tiny_layouts["native_lora_new"]), str(tiny_layouts["qwen"])]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=dict(os.environ),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BNB-plain False" in out.stdout
    assert "BNB-8bit True" in out.stdout


def test_quantized_vlm_8bit(tiny_layouts):
    pytest.importorskip("bitsandbytes")
    vlm, _ = vlm_loading.load_vlm(Release.open(tiny_layouts["native_lora_new"], vlm_base=tiny_layouts["qwen"]), quantization="8bit")
    q = vlm.model.language_model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear8bitLt"
