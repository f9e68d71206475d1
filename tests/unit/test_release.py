"""deepgen_model/release.py: a release is opened once, classified in one vocabulary, combined by one rule."""
import shutil

import pytest
import torch

from deepgen_model import DeepGenPipeline, release
from deepgen_model.convert import convert
from deepgen_model.errors import DeepGenLoadError
from deepgen_model.kinds import SAVED_DIT
from deepgen_model.release import (CONVERTED, DIFFUSERS, FILE_KINDS, NATIVE, QWEN, UNIPIC2, MissingPart, Release,
                                   file_kind, folder_kind)


@pytest.fixture
def counted(monkeypatch):
    """Counts torch.load calls per file and detect_layout calls."""
    calls = {"torch.load": [], "detect_layout": 0}
    load, detect = torch.load, release.detect_layout

    def counting_load(f, *args, **kwargs):
        calls["torch.load"].append(str(f))
        return load(f, *args, **kwargs)

    def counting_detect(path):
        calls["detect_layout"] += 1
        return detect(path)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(release, "detect_layout", counting_detect)
    return calls


def test_native_checkpoint_load_reads_model_pt_once(tiny_layouts, counted):
    """The whole pipeline from a native model.pt (+ Qwen and UniPic2 bases): DiT, SCB and VLM LoRA
    all come from ONE read of model.pt, and the layout is detected once."""
    pipe = DeepGenPipeline.from_pretrained(tiny_layouts["native_lora_new"], vlm_base=tiny_layouts["qwen"],
                                           dit_base=tiny_layouts["unipic2"], dtype="fp32", device="cpu")
    assert counted["torch.load"] == [str(tiny_layouts["native_lora_new"])]
    assert counted["detect_layout"] == 1
    assert pipe.transformer.dit is not None and pipe.scb is not None and pipe.vlm is not None


def test_convert_of_a_native_checkpoint_reads_model_pt_once(tiny_layouts, counted, tmp_path):
    convert(tiny_layouts["native_lora_new"], tmp_path, vlm_base=tiny_layouts["qwen"],
            dit_base=tiny_layouts["unipic2"], dtype="fp32")
    assert counted["torch.load"] == [str(tiny_layouts["native_lora_new"])]
    assert counted["detect_layout"] == 1


def test_one_vocabulary_for_folders_and_files(tiny_layouts, tmp_path):
    assert folder_kind(tiny_layouts["diffusers"]) == DIFFUSERS
    assert folder_kind(tiny_layouts["qwen"]) == QWEN
    assert folder_kind(tiny_layouts["unipic2"]) == UNIPIC2
    assert folder_kind(tiny_layouts["native"].parent) == NATIVE
    assert folder_kind(tmp_path) is None
    (tmp_path / "deepgen_dit.safetensors").write_bytes(b"")
    assert folder_kind(tmp_path) == CONVERTED
    assert file_kind("model.pt") == NATIVE and file_kind("deepgen_vlm_bf16.safetensors") == FILE_KINDS["vlm"]
    assert file_kind("other.safetensors") == SAVED_DIT and file_kind("notes.txt") is None
    with pytest.raises(DeepGenLoadError, match="not a DeepGen 1.0 folder.*vlm_base of the native model.pt"):
        Release.open(tiny_layouts["qwen"])
    with pytest.raises(DeepGenLoadError, match="not a DeepGen 1.0 folder.*dit_base of the native model.pt"):
        Release.open(tiny_layouts["unipic2"])


def test_native_needs_its_bases(tiny_layouts):
    native = Release.open(tiny_layouts["native"])
    native.require("dit", "scb")  # model.pt alone has these
    with pytest.raises(MissingPart, match="set vlm_base to Qwen/Qwen2.5-VL-3B-Instruct") as e:
        native.require("dit", "vlm")
    assert e.value.kind == QWEN
    with pytest.raises(MissingPart, match="set dit_base to Skywork/UniPic2") as e:
        Release.open(tiny_layouts["native"], vlm_base=tiny_layouts["qwen"]).require("vlm", "vae")
    assert e.value.kind == UNIPIC2
    Release.open(tiny_layouts["native"], tiny_layouts["qwen"], tiny_layouts["unipic2"]).require(*release.COMPONENTS)


def test_complete_releases_refuse_unused_bases_and_name_missing_parts(tiny_layouts, tmp_path):
    with pytest.raises(DeepGenLoadError, match="vlm_base are only used with the native model.pt"):
        Release.open(tiny_layouts["diffusers"], vlm_base=tiny_layouts["qwen"]).require("vlm")
    old = tmp_path / "old-release"
    shutil.copytree(tiny_layouts["diffusers"], old, ignore=shutil.ignore_patterns("vlm"))
    with pytest.raises(MissingPart, match=r"missing vlm/config\.json in .*old-release; download the release's vlm/"):
        Release.open(old).require("dit", "vlm")
    # an early release without vlm/ takes the stock Qwen base (load_vlm warns): the base is used, not refused
    Release.open(old, vlm_base=tiny_layouts["qwen"]).require("vlm")
    (tmp_path / "conv").mkdir()
    (tmp_path / "conv" / "deepgen_dit.safetensors").write_bytes(b"")
    with pytest.raises(MissingPart, match=r"missing deepgen_scb\.safetensors in .*conv; download the output folder"):
        Release.open(tmp_path / "conv").require("dit", "scb")
    with pytest.raises(MissingPart, match=r"missing deepgen_vlm\.safetensors in .*conv"):
        Release.open(tmp_path / "conv").require("dit", "tokenizer")


def test_each_layout_hands_out_its_components(tiny, tiny_layouts, tmp_path):
    """The Release hands out each component as tensors + config (the builders never ask which layout): the same SCB tensors
    in every layout, with only what the release records of their config; model.pt's DiT without its prefix
    and with the dit_base's config; the base VLM with model.pt's LoRA merged; the tokenizer's sources."""
    convert(tiny_layouts["diffusers"], tmp_path, components=("scb", "vlm"))
    diffusers, converted = Release.open(tiny_layouts["diffusers"]), Release.open(tmp_path)
    native = Release.open(tiny_layouts["native_lora_new"], tiny_layouts["qwen"], tiny_layouts["unipic2"])
    scbs = {r.layout: r.scb_part() for r in (diffusers, native, converted)}
    for part in scbs.values():
        assert set(part.tensors) == set(tiny.scb_state)
        assert all(torch.equal(part.tensors[k], v) for k, v in tiny.scb_state.items())
    # connector/config.json: only what shapes cannot tell; model.pt records nothing; the converted file all of it
    assert scbs[DIFFUSERS].config == {k: tiny.connector_config[k] for k in ("num_attention_heads", "layer_norm_eps")}
    assert scbs[NATIVE].config == {} and scbs[NATIVE].name == tiny_layouts["native_lora_new"]
    assert scbs[CONVERTED].config["hidden_size"] == tiny.connector_config["hidden_size"]

    dit = native.dit_part()
    assert set(dit.tensors) == set(tiny.dit.state_dict()) and dit.name == f"{tiny_layouts['native_lora_new']} (transformer.*)"
    assert dit.config["num_layers"] == tiny.dit_base.config.num_layers
    folder = diffusers.dit_part()  # transformer/ read as tensors + config.json, like every other layout's DiT
    assert folder.name == tiny_layouts["diffusers"] / "transformer"
    assert set(folder.tensors) == set(tiny.dit.state_dict()) and folder.config["num_layers"] == tiny.dit.config.num_layers
    for opened, root in ((native, "unipic2"), (diffusers, "diffusers")):  # vae/ folders: tensors + config too
        vae = opened.vae_part()
        assert vae.name == tiny_layouts[root] / "vae" and set(vae.tensors) == set(tiny.vae.state_dict())
        assert vae.config["latent_channels"] == tiny.vae.config.latent_channels

    vlm = native.vlm_part()
    assert vlm.name == tiny_layouts["qwen"] and vlm.config["model_type"] == "qwen2_5_vl"
    assert set(vlm.tensors) == set(tiny.vlm_merged_state)
    for k, v in tiny.vlm_merged_state.items():
        torch.testing.assert_close(vlm.tensors[k], v, rtol=0, atol=1e-6, msg=k)
    stock = diffusers.vlm_part()  # the release's vlm/ folder (merged already): its tensors + config.json
    assert stock.name == tiny_layouts["diffusers"] / "vlm" and set(stock.tensors) == set(tiny.vlm_merged_state)
    assert stock.config["hidden_size"] == vlm.config["hidden_size"]
    assert native.tokenizer_sources() == [tiny_layouts["qwen"]]
    assert diffusers.tokenizer_sources()[0] == tiny_layouts["diffusers"] / "tokenizer"
    assert converted.tokenizer_sources() == [tmp_path / "deepgen_vlm.safetensors"]
    assert converted.tokenizer_files() == diffusers.tokenizer_files() and "tokenizer.json" in diffusers.tokenizer_files()
