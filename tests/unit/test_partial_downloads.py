"""A partial download (the commonest real failure with 14 GB over home links) is answered file by file.

Missing and truncated files of a release folder are named one by one — from the shard index, the shards'
"-of-N" names and the safetensors headers — each with its download URL and the command that fetches just
that file (`python -m deepgen_model.download --file PATH`), never as a parameter-count mismatch that
sends the user to download whole folders again.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from deepgen_model import download as dl
from deepgen_model import loading, vlm_loading
from deepgen_model.release import Release
from deepgen_model.errors import DeepGenLoadError
from deepgen_model.pipeline import DeepGenPipeline

RELEASE_URL = "https://huggingface.co/deepgenteam/DeepGen-1.0-diffusers/resolve/main/"
QWEN_URL = "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/resolve/main/"


@pytest.fixture
def models(tiny_layouts, tmp_path):
    """A models/deepgen folder with copies of the tiny diffusers release and the native layout's parts."""
    root = tiny_layouts["diffusers"].parent
    for name in ("DeepGen-1.0-diffusers", "Qwen2.5-VL-3B-Instruct", "DeepGen-1.0-lora-new"):
        shutil.copytree(root / name, tmp_path / name)
    return tmp_path


def one_file_fix(path: Path, url: str) -> str:
    """What every message must offer for a file: its URL and the command that fetches just it."""
    return f"get it from {url} (or run: cd {dl.PACK_ROOT} && {sys.executable} -m deepgen_model.download --file {path})"


def refusal(call) -> str:
    with pytest.raises(DeepGenLoadError) as err:
        call()
    return str(err.value)


def test_a_missing_vlm_shard_is_named_with_its_url_not_as_a_parameter_mismatch(models):
    """The issue's case: vlm/model-00002-of-00002.safetensors missing read "config implies at least
    1,229,696 parameters but the weights hold only 755,392 ... download both again"."""
    release = models / "DeepGen-1.0-diffusers"
    shard = release / "vlm" / "model-00002-of-00002.safetensors"
    shard.unlink()
    for call in (lambda: vlm_loading.load_vlm(release), lambda: DeepGenPipeline.from_pretrained(release, device="cpu")):
        msg = refusal(call)
        assert msg.startswith(f"VLM folder {release / 'vlm'}: model-00002-of-00002.safetensors is missing "
                              "(listed in model.safetensors.index.json); "), msg
        assert one_file_fix(shard, RELEASE_URL + "vlm/model-00002-of-00002.safetensors") in msg
        assert "model-00001-of-00002.safetensors) look complete" in msg and "no need to download them again" in msg
        assert "parameters" not in msg and "both" not in msg


def test_missing_and_truncated_shards_are_listed_one_by_one(models):
    vlm = models / "DeepGen-1.0-diffusers" / "vlm"
    first, second = vlm / "model-00001-of-00002.safetensors", vlm / "model-00002-of-00002.safetensors"
    data_bytes = first.stat().st_size - 8 - _header_len(first)
    first.write_bytes(first.read_bytes()[:-1000])  # an interrupted download
    second.unlink()
    msg = refusal(lambda: vlm_loading.load_vlm(vlm.parent))
    lines = msg.splitlines()
    assert lines[0] == f"VLM folder {vlm}: 2 files are missing or damaged. Fetch just these:"
    assert lines[1] == "  model-00002-of-00002.safetensors: missing (listed in model.safetensors.index.json)"
    assert lines[2] == "    " + one_file_fix(second, RELEASE_URL + "vlm/model-00002-of-00002.safetensors")
    assert lines[3] == (f"  model-00001-of-00002.safetensors: is truncated: it holds {data_bytes - 1000:,} bytes of "
                        f"tensor data but its header describes {data_bytes:,} (an interrupted download or copy)")
    assert lines[4] == "    " + one_file_fix(first, RELEASE_URL + "vlm/model-00001-of-00002.safetensors")
    assert len(lines) == 5  # nothing else was damaged: no "other files" line either


def _header_len(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def test_a_truncated_dit_names_the_file_and_how_much_is_there(models):
    release = models / "DeepGen-1.0-diffusers"
    dit = release / "transformer" / "diffusion_pytorch_model.safetensors"
    data = dit.read_bytes()
    dit.write_bytes(data[:-100])
    data_bytes = len(data) - 8 - _header_len(dit)
    msg = refusal(lambda: loading.load_dit(release))
    assert msg == (f"DiT file {dit}: is truncated: it holds {data_bytes - 100:,} bytes of tensor data but its header "
                   f"describes {data_bytes:,} (an interrupted download or copy); download "
                   f"diffusion_pytorch_model.safetensors again: "
                   f"{one_file_fix(dit, RELEASE_URL + 'transformer/diffusion_pytorch_model.safetensors')}.")


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.safetensors", "config.json"])
def test_the_dit_folder_error_names_the_missing_file(models, name):
    """It used to say "<folder> needs config.json and *.safetensors weights"."""
    release = models / "DeepGen-1.0-diffusers"
    gone = release / "transformer" / name
    gone.unlink()
    msg = refusal(lambda: loading.load_dit(release))
    assert msg.startswith(f"DiT folder {release / 'transformer'}: {name} is missing"), msg
    assert one_file_fix(gone, RELEASE_URL + f"transformer/{name}") in msg


def test_a_shard_without_the_tensors_the_index_puts_in_it_is_named(models):
    vlm = models / "DeepGen-1.0-diffusers" / "vlm"
    index = json.loads((vlm / "model.safetensors.index.json").read_text())
    moved = next(k for k, v in sorted(index["weight_map"].items()) if v == "model-00002-of-00002.safetensors")
    index["weight_map"][moved] = "model-00001-of-00002.safetensors"  # as if shard 1 were from another revision
    (vlm / "model.safetensors.index.json").write_text(json.dumps(index))
    msg = refusal(lambda: vlm_loading.load_vlm(vlm.parent))
    assert msg.startswith(f"VLM file {vlm / 'model-00001-of-00002.safetensors'}: lacks 1 of the ")
    assert f"(e.g. {moved}): a different or damaged file" in msg
    assert RELEASE_URL + "vlm/model-00001-of-00002.safetensors" in msg


def test_shards_without_an_index_are_counted_from_their_names(models):
    vlm = models / "DeepGen-1.0-diffusers" / "vlm"
    (vlm / "model.safetensors.index.json").unlink()
    (vlm / "model-00001-of-00002.safetensors").unlink()
    msg = refusal(lambda: vlm_loading.load_vlm(vlm.parent))
    assert msg.startswith(f"VLM folder {vlm}: model-00001-of-00002.safetensors is missing (shard 1 of 2); ")


def test_a_qwen_base_shard_missing_names_the_qwen_file(models):
    """The native layout merges model.pt's LoRA into the Qwen base: its shards are checked the same way."""
    qwen = models / "Qwen2.5-VL-3B-Instruct"
    shard = sorted(qwen.glob("model-*.safetensors"))[-1]
    shard.unlink()
    msg = refusal(lambda: vlm_loading.load_vlm(Release.open(models / "DeepGen-1.0-lora-new" / "model.pt", vlm_base=qwen)))
    assert msg.startswith(f"VLM folder {qwen}: {shard.name} is missing"), msg
    assert one_file_fix(shard, QWEN_URL + shard.name) in msg


def test_an_intact_release_still_loads(models):
    release = models / "DeepGen-1.0-diffusers"
    assert loading.load_dit(release) is not None
    assert vlm_loading.load_vlm(release)[0] is not None


@pytest.mark.parametrize("rel,component", [("connector/model.safetensors", "scb"), ("vlm/config.json", "vlm")])
def test_a_release_missing_one_file_of_a_folder_names_that_file_not_the_folder(models, rel, component):
    """The folder is there (a partial download): the file, with its URL, not the whole folder or release."""
    from deepgen_model.release import Release

    release = models / "DeepGen-1.0-diffusers"
    (release / rel).unlink()
    msg = refusal(lambda: Release.open(release).require(component))
    assert msg == f"missing {rel} in {release}; {one_file_fix(release / rel, RELEASE_URL + rel)}."
    if component == "scb":
        msg = refusal(lambda: loading.load_scb(release))
        assert msg == f"{release / rel} is missing: {one_file_fix(release / rel, RELEASE_URL + rel)}"
