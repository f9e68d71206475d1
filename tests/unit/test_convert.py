"""deepgen_model.convert: four self-describing safetensors files that reload to identical tensors."""
import json

import pytest
import torch
from safetensors import safe_open

from deepgen_model import convert as conv
from deepgen_model import loading
from deepgen_model.release import CONVERTED_FILES, Release, detect_layout, read_converted
from deepgen_model.vlm_loading import load_vlm
from deepgen_model.errors import DeepGenLoadError


@pytest.fixture(scope="module")
def converted(tiny_layouts, tmp_path_factory):
    """The native model.pt (new-style LoRA) + Qwen base + UniPic2 base, converted."""
    dst = tmp_path_factory.mktemp("converted")
    written = conv.convert(tiny_layouts["native_lora_new"], dst, vlm_base=tiny_layouts["qwen"],
                           dit_base=tiny_layouts["unipic2"])
    return dst, written


def _equal(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_files_and_metadata(converted):
    dst, written = converted
    assert {p.name for p in written.values()} == set(CONVERTED_FILES.values())
    for component, path in written.items():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        assert meta["format"] == "deepgen-1.0" and meta["component"] == component
        json.loads(meta["config"])
    assert not list(dst.glob("*.partial"))


def test_reload_identical(tiny, tiny_layouts, converted):
    dst, _ = converted
    assert detect_layout(dst) == "converted"
    _equal(loading.load_dit(dst).state_dict(), tiny.dit.state_dict())
    _equal(loading.load_vae(dst).state_dict(), tiny.vae.state_dict())
    scb = loading.load_scb(dst)
    assert scb.config == loading.load_scb(tiny_layouts["diffusers"]).config
    _equal(scb.state_dict(), tiny.scb_state)
    direct, _ = load_vlm(Release.open(tiny_layouts["native_lora_new"], vlm_base=tiny_layouts["qwen"]))
    vlm, tok = load_vlm(dst / "deepgen_vlm.safetensors")
    _equal(vlm.state_dict(), direct.state_dict())
    assert vlm.get_output_embeddings().weight is vlm.get_input_embeddings().weight
    text = "<|im_start|>user\nGenerate an image: a red cat<|im_end|>"
    assert tok(text).input_ids == tiny.tokenizer(text).input_ids
    assert loading.load_scheduler_config(dst) == loading.load_scheduler_config(Release.open(
        tiny_layouts["native"], dit_base=tiny_layouts["unipic2"]))


def test_vlm_file_uses_legacy_names_without_lm_head(tiny, converted):
    state, meta = read_converted(converted[0], "vlm")
    assert set(state) == set(tiny.vlm_merged_state)
    assert "lm_head.weight" not in state
    assert json.loads(meta["config"])["model_type"] == "qwen2_5_vl"
    assert "tokenizer.json" in json.loads(meta["tokenizer_files"])


def test_wrong_component_or_foreign_file(converted, tiny_layouts):
    dst, _ = converted
    with pytest.raises(DeepGenLoadError, match=r"deepgen_dit\.safetensors holds the DeepGen 'dit' component, not 'vlm'"):
        load_vlm(dst / "deepgen_dit.safetensors")
    foreign = tiny_layouts["diffusers"] / "transformer" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(DeepGenLoadError, match="not a DeepGen converted file"):
        load_vlm(foreign)


def test_refuses_overwrite_and_force(tiny_layouts, tmp_path, capsys):
    args = [str(tiny_layouts["diffusers"]), str(tmp_path), "--dtype", "bf16"]
    assert conv.main(args) == 0
    out = capsys.readouterr().out
    assert all(f"wrote {tmp_path / n}" in out and "MiB" in out for n in CONVERTED_FILES.values())
    before = (tmp_path / "deepgen_dit.safetensors").stat().st_mtime_ns
    assert conv.main(args) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "deepgen_dit.safetensors").stat().st_mtime_ns == before
    assert conv.main(args + ["--force"]) == 0
    dit = loading.load_dit(tmp_path)
    assert {t.dtype for t in dit.state_dict().values()} == {torch.bfloat16}
    scb = loading.load_scb(tmp_path)  # the fp32 connector was cast too
    assert scb.meta_queries.dtype == torch.bfloat16


def test_native_without_vlm_path_fails_clearly(tiny_layouts, tmp_path):
    with pytest.raises(DeepGenLoadError, match="set vlm_base to"):
        conv.convert(tiny_layouts["native_lora_new"], tmp_path, components=("vlm",))


def test_the_old_names_of_the_bases_still_work_and_warn(tiny_layouts, tmp_path):
    """vlm_base / dit_base are the bases' one name (the loader widgets'); vlm_path / base_path and the CLI's
    --vlm-path / --base-path are kept as deprecated spellings."""
    native, q, u = tiny_layouts["native_lora_new"], tiny_layouts["qwen"], tiny_layouts["unipic2"]
    with pytest.warns(DeprecationWarning, match="vlm_path= is deprecated: pass vlm_base="):
        written = conv.convert(native, tmp_path / "a", vlm_path=q, base_path=u, components=("vae",))
    assert written["vae"].is_file()
    assert conv.main([str(native), str(tmp_path / "b"), "--vlm-path", str(q), "--base-path", str(u)]) == 0
    assert read_converted(tmp_path / "b", "vae")[0].keys() == read_converted(tmp_path / "a", "vae")[0].keys()
