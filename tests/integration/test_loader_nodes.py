"""DeepGen loader nodes in a real ComfyUI: folder registry, listing, every release layout, errors, 8-bit.

The tiny fixture layouts (deepgen_model/tiny.py) are written under the server's models/deepgen folder,
plus a converted folder made by deepgen_model.convert; ComfyUI rescans model folders on every listing.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from deepgen_model import tiny as deepgen_tiny

RELEASE = "DeepGen-1.0-diffusers"
QWEN = "Qwen2.5-VL-3B-Instruct"
UNIPIC2 = "UniPic2-SD3.5M-Kontext-2B"
NATIVE = "DeepGen-1.0/model.pt"
NATIVE_NEW = "DeepGen-1.0-lora-new/model.pt"
NATIVE_LEGACY = "DeepGen-1.0-lora-legacy/model.pt"
CONVERTED = "converted"


def place_layouts(models: Path, tiny) -> Path:
    """Idempotent (other test modules may have written some already): every tiny release layout of
    deepgen_tiny.build_all_layouts + a converted folder, under <models>/deepgen."""
    from deepgen_model.convert import convert

    root = models / "deepgen"
    writers = {
        RELEASE: lambda p: deepgen_tiny.write_diffusers_release(p, tiny),
        QWEN: lambda p: deepgen_tiny.write_qwen_base(p, tiny),
        UNIPIC2: lambda p: deepgen_tiny.write_unipic2_base(p, tiny),
        NATIVE: lambda p: deepgen_tiny.write_native_model_pt(p, tiny),
        NATIVE_NEW: lambda p: deepgen_tiny.write_native_model_pt(p, tiny, "new"),
        NATIVE_LEGACY: lambda p: deepgen_tiny.write_native_model_pt(p, tiny, "legacy"),
    }
    for name, write in writers.items():
        if not (root / name).exists():
            write(root / name)
    if not (root / CONVERTED / "deepgen_vae.safetensors").is_file():
        convert(root / RELEASE, root / CONVERTED)
    return root


@pytest.fixture(scope="module")
def layouts(comfy_models, tiny) -> Path:
    return place_layouts(comfy_models, tiny)


def pack_module(comfy, name: str):
    """A module of the pack as ComfyUI imported it (e.g. 'nodes.paths')."""
    return sys.modules[f"{comfy.pack.__name__}.{name}"]


def options(info: dict, node: str, name: str) -> list:
    inputs = info[node]["input"]
    spec = inputs.get("required", {}).get(name) or inputs["optional"][name]
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def errors_text(messages) -> str:
    return repr(messages)


def checkpoint_graph(ckpt, vlm_base="none", dit_base="none") -> dict:
    return {
        "1": {"class_type": "DeepGenCheckpointLoader",
              "inputs": {"ckpt_name": ckpt, "vlm_base": vlm_base, "dit_base": dit_base, "weight_dtype": "fp32",
                         "quantization": "none", "attention": "sdpa"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 3]}},
    }


def vlm_graph(source, lora=None, quantization="none", weight_dtype="fp32", scb=RELEASE) -> dict:
    vlm_inputs = {"vlm_name": source, "weight_dtype": weight_dtype, "quantization": quantization, "attention": "sdpa"}
    if lora:
        vlm_inputs["lora"] = lora
    return {
        "1": {"class_type": "DeepGenVLMLoader", "inputs": vlm_inputs},
        "2": {"class_type": "DeepGenSCBLoader", "inputs": {"scb_name": scb, "weight_dtype": weight_dtype}},
        "3": {"class_type": "DeepGenTextEncode", "inputs": {"vlm": ["1", 0], "scb": ["2", 0], "prompt": "a red cat",
                                                              "negative_prompt": ""}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }


def cached_output(comfy, node_id: str) -> list:
    """Outputs of a node of the last in-process run: one list per output socket."""
    return comfy.node_output(node_id)


# ------------------------------------------------------------------ folder registry and listing

def test_deepgen_folder_registered_with_explicit_extensions(comfy_inprocess, layouts):
    fp = comfy_inprocess.folder_paths
    paths_, exts = fp.folder_names_and_paths["deepgen"]
    assert str(layouts) in paths_
    assert exts and ".safetensors" in exts and ".pt" in exts  # an empty set would mean "every file"
    # extra_model_paths.yaml entries made before the pack loaded are kept, and the default is added once
    paths_mod = pack_module(comfy_inprocess, "nodes.paths")
    saved = fp.folder_names_and_paths["deepgen"]
    try:
        fp.folder_names_and_paths["deepgen"] = (["/somewhere/from/yaml"], set())
        paths_mod.register()
        paths_mod.register()
        new_paths, new_exts = fp.folder_names_and_paths["deepgen"]
        assert new_paths == ["/somewhere/from/yaml", str(layouts)]
        assert new_exts == paths_mod.EXTENSIONS
    finally:
        fp.folder_names_and_paths["deepgen"] = saved


def test_loaders_list_every_layout(comfy_server, layouts):
    info = comfy_server.object_info()
    vlm_sources = options(info, "DeepGenVLMLoader", "vlm_name")
    assert {RELEASE, QWEN, f"{CONVERTED}/deepgen_vlm.safetensors"} <= set(vlm_sources)
    assert UNIPIC2 not in vlm_sources and NATIVE not in vlm_sources
    # other test modules may add layouts of their own: check inclusion, and what must NOT be listed
    loras = options(info, "DeepGenVLMLoader", "lora")
    assert loras[0] == "none" and {NATIVE, NATIVE_LEGACY, NATIVE_NEW} <= set(loras)
    assert not {RELEASE, QWEN, UNIPIC2} & set(loras)
    scb_sources = set(options(info, "DeepGenSCBLoader", "scb_name"))
    assert {RELEASE, NATIVE, NATIVE_NEW, NATIVE_LEGACY, f"{CONVERTED}/deepgen_scb.safetensors"} <= scb_sources
    assert not {QWEN, UNIPIC2, f"{CONVERTED}/deepgen_vlm.safetensors"} & scb_sources
    checkpoints = set(options(info, "DeepGenCheckpointLoader", "ckpt_name"))
    assert {RELEASE, NATIVE, NATIVE_NEW, NATIVE_LEGACY, CONVERTED} <= checkpoints
    assert not {QWEN, UNIPIC2} & checkpoints
    assert options(info, "DeepGenCheckpointLoader", "vlm_base")[0] == "none"
    assert QWEN in options(info, "DeepGenCheckpointLoader", "vlm_base")
    assert UNIPIC2 in options(info, "DeepGenCheckpointLoader", "dit_base")


def test_listing_spans_all_registered_paths_and_text_encoders(comfy_inprocess, layouts, tmp_path, tiny):
    fp = comfy_inprocess.folder_paths
    paths_mod = pack_module(comfy_inprocess, "nodes.paths")
    extra, te = tmp_path / "extra_deepgen", tmp_path / "text_encoders"
    deepgen_tiny.write_qwen_base(extra / "nested" / "Qwen-extra", tiny)
    (te / "vlms").mkdir(parents=True)
    (te / "vlms" / "deepgen_vlm_copy.safetensors").symlink_to(layouts / CONVERTED / "deepgen_vlm.safetensors")
    (te / "unrelated.safetensors").write_bytes(b"")  # not a DeepGen file: never listed
    fp.add_model_folder_path("deepgen", str(extra))
    fp.add_model_folder_path("text_encoders", str(te))
    try:
        listed = paths_mod.choices(*pack_module(comfy_inprocess, "deepgen_model.release").SOURCES["vlm"])
        assert {"nested/Qwen-extra", "vlms/deepgen_vlm_copy.safetensors", QWEN, RELEASE} <= set(listed)
        assert "unrelated.safetensors" not in listed
        entry = paths_mod.resolve("nested/Qwen-extra", ("qwen",), "source")
        assert Path(entry.path) == extra / "nested" / "Qwen-extra"
    finally:
        fp.folder_names_and_paths["deepgen"][0].remove(str(extra))
        fp.folder_names_and_paths["text_encoders"][0].remove(str(te))


def test_listings_are_walked_again_only_when_a_folder_changes(comfy_inprocess, tmp_path, monkeypatch):
    """Every widget refresh and validation lists the models: a folder is walked again only when core's own list of
    its folder key is rebuilt (a folder's mtime changed), or while it changed too recently to trust its mtime."""
    import os
    import time

    fp = comfy_inprocess.folder_paths
    paths_mod = pack_module(comfy_inprocess, "nodes.paths")
    extra = tmp_path / "cached_deepgen"
    (extra / "a").mkdir(parents=True)
    (extra / "a" / "deepgen_vae.safetensors").write_bytes(b"")
    settled = time.time() - 10 * paths_mod.SETTLE
    for folder in (extra / "a", extra):
        os.utime(folder, (settled, settled))
    walked, scan = [], paths_mod._scan
    monkeypatch.setattr(paths_mod, "_scan", lambda root: (walked.append(root), scan(root))[1])
    fp.add_model_folder_path("deepgen", str(extra))
    try:
        assert "a/deepgen_vae.safetensors" in paths_mod.choices("vae_file")
        assert paths_mod.check("a/deepgen_vae.safetensors", ("vae_file",), "vae_name") is True
        assert paths_mod.resolve("a", ("converted",), "vae_name").path == str(extra / "a")
        assert walked.count(str(extra)) == 1  # once, then from the cache
        (extra / "b.pt").write_bytes(b"")  # the folder's mtime moves: core's list and ours are made again
        assert "b.pt" in paths_mod.choices("native")
        assert "b.pt" in paths_mod.choices("native")  # changed just now: walked again, its mtime not trusted yet
        assert walked.count(str(extra)) == 3
    finally:
        fp.folder_names_and_paths["deepgen"][0].remove(str(extra))
    assert "b.pt" not in paths_mod.choices("native")  # a folder taken off the key is no longer listed


# ------------------------------------------------------------------ loading every layout

@pytest.mark.parametrize("source, lora, scb", [
    (RELEASE, None, RELEASE),
    (QWEN, NATIVE_NEW, NATIVE_NEW),
    (QWEN, NATIVE_LEGACY, NATIVE_LEGACY),
    (f"{CONVERTED}/deepgen_vlm.safetensors", None, f"{CONVERTED}/deepgen_scb.safetensors"),
])
def test_vlm_and_scb_loaders_load_every_layout(comfy_inprocess, layouts, source, lora, scb):
    success, _, messages = comfy_inprocess.run(vlm_graph(source, lora, scb=scb))
    assert success, errors_text(messages)
    vlm_patcher = cached_output(comfy_inprocess, "1")[0][0]
    scb_patcher = cached_output(comfy_inprocess, "2")[0][0]
    import comfy.model_patcher

    assert isinstance(vlm_patcher, comfy.model_patcher.ModelPatcher)
    assert isinstance(scb_patcher, comfy.model_patcher.ModelPatcher)
    assert type(vlm_patcher.model.vlm).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert vlm_patcher.model.tokenizer.convert_tokens_to_ids("<|image_pad|>") == deepgen_tiny.TINY_TOKEN_IDS["<|image_pad|>"]


def test_lora_layouts_equal_the_release_vlm(comfy_inprocess, layouts):
    """Qwen base + model.pt LoRA (both namings) gives the same conditioning as the release's merged vlm/."""
    import torch

    conds = []
    for source, lora in ((RELEASE, None), (QWEN, NATIVE_NEW), (QWEN, NATIVE_LEGACY)):
        success, _, messages = comfy_inprocess.run(vlm_graph(source, lora))
        assert success, errors_text(messages)
        conds.append(cached_output(comfy_inprocess, "3")[0][0][0][0])
    for other in conds[1:]:
        torch.testing.assert_close(other, conds[0], rtol=1e-4, atol=1e-5)


def test_checkpoint_loader_loads_every_layout(comfy_inprocess, layouts):
    import comfy.model_patcher
    import comfy.sd

    for ckpt, vlm_base, base in ((RELEASE, "none", "none"), (CONVERTED, "none", "none"), (NATIVE_NEW, QWEN, UNIPIC2)):
        success, _, messages = comfy_inprocess.run(checkpoint_graph(ckpt, vlm_base, base))
        assert success, (ckpt, errors_text(messages))
        model, vlm, scb, vae = (o[0] for o in cached_output(comfy_inprocess, "1"))
        assert type(model.model).__name__ == "DeepGenModel"
        assert isinstance(vlm, comfy.model_patcher.ModelPatcher) and isinstance(scb, comfy.model_patcher.ModelPatcher)
        assert isinstance(vae, comfy.sd.VAE)


def test_native_checkpoint_is_read_once(comfy_inprocess, layouts, monkeypatch):
    """DiT, SCB and VLM LoRA of a native model.pt come from one read of the file, in the node too."""
    import torch

    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: reads.append(str(f)) or load(f, *a, **kw))
    success, _, messages = comfy_inprocess.run(checkpoint_graph(NATIVE_LEGACY, QWEN, UNIPIC2))
    assert success, errors_text(messages)
    assert reads == [str(layouts / NATIVE_LEGACY)]


# ------------------------------------------------------------------ errors

def test_native_checkpoint_without_bases_names_what_to_download(comfy_inprocess, layouts):
    success, _, messages = comfy_inprocess.run(checkpoint_graph(NATIVE))
    assert not success
    text = errors_text(messages)
    assert "vlm_base" in text and "Qwen/Qwen2.5-VL-3B-Instruct" in text and str(layouts) in text


def test_missing_release_file_names_file_and_folder(comfy_inprocess, layouts, tiny, tmp_path):
    fp = comfy_inprocess.folder_paths
    broken = deepgen_tiny.write_diffusers_release(tmp_path / "Broken-release", tiny)
    (broken / "connector" / "model.safetensors").unlink()
    fp.add_model_folder_path("deepgen", str(tmp_path))
    try:
        success, _, messages = comfy_inprocess.run(vlm_graph(RELEASE, scb="Broken-release"))
    finally:
        fp.folder_names_and_paths["deepgen"][0].remove(str(tmp_path))
    assert not success
    text = errors_text(messages)
    assert "connector/model.safetensors" in text and str(broken) in text


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "DeepGen-1.0-diffusers/../../../etc",
                                 "DeepGen-1.0-diffusers/vlm"])
def test_traversal_and_unlisted_values_rejected_by_validation(comfy_server, layouts, bad):
    prompt = vlm_graph(bad)
    with pytest.raises(comfy_server.PromptRejected) as err:
        comfy_server.post_prompt(prompt)
    node_errors = err.value.body["node_errors"]
    assert "1" in node_errors
    details = repr(node_errors["1"])
    assert "not one of the DeepGen models found" in details and "Searched" in details and "models" in details


def test_qwen_source_without_lora_is_a_clear_error(comfy_inprocess, layouts):
    success, _, messages = comfy_inprocess.run(vlm_graph(QWEN))
    assert not success
    assert "set lora to the native DeepGen model.pt" in errors_text(messages)


# ------------------------------------------------------------------ quantization

def _bnb_problem() -> str | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    try:
        import bitsandbytes  # noqa: F401
        import torch

        from transformers import BitsAndBytesConfig  # noqa: F401
        # the harness runs ComfyUI with --cpu, so the VLM is quantized for the CPU
        bitsandbytes.nn.Linear8bitLt(8, 8, has_fp16_weights=False)(torch.randn(2, 8))
    except Exception as e:  # a broken native library or no backend for this device
        return f"bitsandbytes does not work here ({type(e).__name__}: {e})"
    return None


def test_vlm_loader_8bit(comfy_inprocess, layouts):
    problem = _bnb_problem()
    if problem:
        pytest.skip(f"8-bit VLM loading needs a working bitsandbytes: {problem}")
    import comfy.ops
    import torch

    success, _, messages = comfy_inprocess.run(vlm_graph(RELEASE, quantization="8-bit"))
    assert success, errors_text(messages)
    vlm = cached_output(comfy_inprocess, "1")[0][0].model.vlm
    # the quantized layers stay bitsandbytes' own (never re-classed to comfy.ops like the VLM's other layers)
    assert any(type(m).__name__ == "Linear8bitLt" and type(m).__module__.startswith("bitsandbytes")
               for m in vlm.modules())
    assert not any(isinstance(m, comfy.ops.CastWeightBiasOp) for m in vlm.modules()
                   if type(m).__module__.startswith("bitsandbytes"))
    quantized = cached_output(comfy_inprocess, "3")[0][0][0][0]
    success, _, messages = comfy_inprocess.run(vlm_graph(RELEASE))
    assert success, errors_text(messages)
    full = cached_output(comfy_inprocess, "3")[0][0][0][0]
    assert quantized.shape == full.shape and torch.isfinite(quantized).all()
    cos = torch.nn.functional.cosine_similarity(quantized.flatten().float(), full.flatten().float(), dim=0)
    assert cos > 0.95, cos
