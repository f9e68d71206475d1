"""Reliability (issue 7): bad weight files and unsafe paths, through the REAL server's nodes.

Each broken file sits in models/deepgen/h13/ as a user would put it there; the loader node must fail with
an execution_error whose message names the file (and the key, for tensor problems) and what was expected,
and a pickle that carries code must be refused without its payload ever running. Widget values that point
outside the registered model folders are rejected by POST /prompt validation, for every loader input.
"""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file


RELEASE = "DeepGen-1.0-diffusers"
SUB = "h13"


@pytest.fixture(scope="module")
def bad(comfy_models, release):
    """models/deepgen/h13/<case> copies of the tiny release, each broken in one way."""
    root = comfy_models / "deepgen" / SUB
    root.mkdir(exist_ok=True)

    def copy(name, *skip):
        dst = root / name
        if not dst.exists():
            shutil.copytree(release, dst, ignore=shutil.ignore_patterns(*skip))
        return dst

    return root, copy


def loader(node: str, name: str) -> dict:
    inputs = {
        "DeepGenSCBLoader": {"scb_name": name, "weight_dtype": "fp32"},
        "DeepGenDiTLoader": {"dit_name": name, "dit_base": "none", "weight_dtype": "fp32"},
        "DeepGenVLMLoader": {"vlm_name": name, "weight_dtype": "fp32", "quantization": "none", "attention": "sdpa"},
        "DeepGenVAELoader": {"vae_name": name},
        "DeepGenCheckpointLoader": {"ckpt_name": name, "vlm_base": "none", "dit_base": "none", "weight_dtype": "fp32",
                                    "quantization": "none", "attention": "sdpa"},
    }[node]
    return {"1": {"class_type": node, "inputs": inputs}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def execution_error(server, prompt) -> dict:
    """-> the execution_error data of a prompt that must fail while executing (not in validation)."""
    entry = server.run(prompt, check=False)
    assert entry["status"]["status_str"] == "error", entry["status"]
    (err,) = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    assert err["node_id"] == "1"
    return err


# ------------------------------------------------------------------ pickles that carry code

class _Payload:
    """Unpickling this with weights_only=False would call builtins.open(target, "w"): the file would appear."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("node", ["DeepGenSCBLoader", "DeepGenDiTLoader"])
@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(comfy_server, bad, tmp_path, node, writer):
    root, _ = bad
    target = tmp_path / f"pwned-{node}-{writer}.txt"
    path = root / f"evil-{writer}" / "model.pt"
    path.parent.mkdir(exist_ok=True)
    payload = {"transformer.pos_embed.proj.weight": torch.zeros(1), "meta_queries": _Payload(str(target))}
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    err = execution_error(comfy_server, loader(node, f"{SUB}/evil-{writer}/model.pt"))
    assert "was refused" in err["exception_message"] and "executable code" in err["exception_message"]
    assert str(path) in err["exception_message"]
    assert not target.exists(), "the pickle's payload ran"


# ------------------------------------------------------------------ truncated / mis-shaped / missing tensors

def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_safetensors_name_the_file(comfy_server, bad, release):
    root, copy = bad
    dit = copy("trunc-dit")
    _truncate(dit / "transformer" / "diffusion_pytorch_model.safetensors")
    msg = execution_error(comfy_server, loader("DeepGenDiTLoader", f"{SUB}/trunc-dit"))["exception_message"]
    assert str(dit / "transformer") in msg and "diffusion_pytorch_model.safetensors" in msg

    vlm = copy("trunc-vlm")
    shard = sorted((vlm / "vlm").glob("*.safetensors"))[-1]
    _truncate(shard, keep=0.01)  # cuts into the header
    msg = execution_error(comfy_server, loader("DeepGenVLMLoader", f"{SUB}/trunc-vlm"))["exception_message"]
    assert msg.startswith(f"VLM file {shard}:") and "truncated" in msg and "download" in msg

    scb = root / "deepgen_scb_truncated.safetensors"  # a converted-style file name: listed for the SCB loader
    shutil.copyfile(release / "connector" / "model.safetensors", scb)
    _truncate(scb)
    msg = execution_error(comfy_server, loader("DeepGenSCBLoader", f"{SUB}/{scb.name}"))["exception_message"]
    assert msg.startswith(f"SCB file {scb}:") and "truncated" in msg and "download" in msg


def test_a_partial_download_names_each_missing_file_with_its_url(comfy_server, bad):
    """Issue 21: one VLM shard missing read as a parameter-count mismatch ("download both again"); a DiT
    folder without its weights as "<folder> needs config.json and *.safetensors weights"."""
    _, copy = bad
    url = "https://huggingface.co/deepgenteam/DeepGen-1.0-diffusers/resolve/main/"
    vlm = copy("partial-vlm", "model-00002-of-00002.safetensors") / "vlm"
    msg = execution_error(comfy_server, loader("DeepGenVLMLoader", f"{SUB}/partial-vlm"))["exception_message"]
    assert msg.startswith(f"VLM folder {vlm}: model-00002-of-00002.safetensors is missing (listed in "
                          "model.safetensors.index.json); get it from " + url + "vlm/model-00002-of-00002.safetensors")
    assert f"-m deepgen_model.download --file {vlm / 'model-00002-of-00002.safetensors'})" in msg
    assert "parameters" not in msg

    dit = copy("partial-dit", "diffusion_pytorch_model.safetensors") / "transformer"  # (and vae/'s: the DiT loads first)
    for node in ("DeepGenDiTLoader", "DeepGenCheckpointLoader"):
        msg = execution_error(comfy_server, loader(node, f"{SUB}/partial-dit"))["exception_message"]
        assert f"DiT folder {dit}: diffusion_pytorch_model.safetensors is missing" in msg, (node, msg)
        assert url + "transformer/diffusion_pytorch_model.safetensors" in msg and "--file" in msg, (node, msg)


def test_wrong_shape_and_missing_tensors_name_the_key(comfy_server, bad):
    _, copy = bad
    scb = copy("shape-scb")
    f = scb / "connector" / "model.safetensors"
    state = load_file(str(f))
    key = "connector.layers.1.mlp.fc2.weight"
    want = tuple(state[key].shape)
    state[key] = torch.zeros(want[0], want[1] + 1)
    save_file(state, str(f))
    msg = execution_error(comfy_server, loader("DeepGenSCBLoader", f"{SUB}/shape-scb"))["exception_message"]
    assert "mis-shaped" in msg and key in msg and f"expected {want}" in msg and str(f) in msg
    # the tensor the connector width is read from: named too
    state[key] = torch.zeros(want)
    p1 = tuple(state["projector_1.weight"].shape)
    state["projector_1.weight"] = torch.zeros(p1[0] + 1, p1[1])
    save_file(state, str(f))
    msg = execution_error(comfy_server, loader("DeepGenSCBLoader", f"{SUB}/shape-scb"))["exception_message"]
    assert "projector_1.weight" in msg and "mis-shaped" in msg and str(f) in msg

    vlm = copy("missing-vlm-tensor")
    shard = sorted((vlm / "vlm").glob("*.safetensors"))[-1]
    state = load_file(str(shard))
    key = next(k for k in sorted(state) if "mlp.up_proj.weight" in k)
    del state[key]
    save_file(state, str(shard), metadata={"format": "pt"})
    msg = execution_error(comfy_server, loader("DeepGenVLMLoader", f"{SUB}/missing-vlm-tensor"))["exception_message"]
    layer = key.split("layers.")[1]  # e.g. "26.mlp.up_proj.weight" (prefix differs by transformers version)
    assert layer in msg and str(vlm / "vlm") in msg and ("missing" in msg or "unloaded" in msg)

    dit = copy("shape-dit")
    f = dit / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    key = next(k for k in sorted(state) if k.endswith("ff.net.0.proj.bias"))
    state[key] = torch.zeros(state[key].shape[0] + 1)
    save_file(state, str(f))
    msg = execution_error(comfy_server, loader("DeepGenDiTLoader", f"{SUB}/shape-dit"))["exception_message"]
    assert key in msg and "expected (" in msg and str(dit / "transformer") in msg and "download them again" in msg


# ------------------------------------------------------------------ wrong component / incomplete release

def test_dit_file_given_to_the_vlm_loader(comfy_server, bad, release):
    root, _ = bad
    raw = root / "deepgen_vlm_is_a_dit.safetensors"  # the DiT's diffusers weights under a VLM file name
    shutil.copyfile(release / "transformer" / "diffusion_pytorch_model.safetensors", raw)
    msg = execution_error(comfy_server, loader("DeepGenVLMLoader", f"{SUB}/{raw.name}"))["exception_message"]
    assert str(raw) in msg and "not a DeepGen converted file" in msg and "deepgen_vlm.safetensors" in msg

    # a converted DiT file renamed as a VLM file: its metadata says which component it is
    state = load_file(str(release / "transformer" / "diffusion_pytorch_model.safetensors"))
    config = json.loads((release / "transformer" / "config.json").read_text())
    conv = root / "deepgen_vlm_renamed_dit.safetensors"
    save_file(state, str(conv), metadata={"format": "deepgen-1.0", "component": "dit", "config": json.dumps(config)})
    msg = execution_error(comfy_server, loader("DeepGenVLMLoader", f"{SUB}/{conv.name}"))["exception_message"]
    assert str(conv) in msg and "holds the DeepGen 'dit' component, not 'vlm'" in msg


def test_release_without_vlm_folder(comfy_server, bad):
    _, copy = bad
    folder = copy("no-vlm", "vlm")
    assert not (folder / "vlm").exists()
    msg = execution_error(comfy_server, loader("DeepGenVLMLoader", f"{SUB}/no-vlm"))["exception_message"]
    assert "missing vlm/config.json" in msg and str(folder) in msg and "vlm/ folder" in msg
    msg = execution_error(comfy_server, loader("DeepGenCheckpointLoader", f"{SUB}/no-vlm"))["exception_message"]
    assert "missing vlm" in msg and str(folder) in msg


# ------------------------------------------------------------------ paths: nothing outside the model folders

TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", f"{RELEASE}/../../../etc",
              "%2e%2e/%2e%2e/etc/passwd", f"{RELEASE}/vlm", f"{RELEASE}\x00.safetensors", "~/.ssh/id_rsa"]
INPUTS = [("DeepGenCheckpointLoader", "ckpt_name"), ("DeepGenCheckpointLoader", "vlm_base"),
          ("DeepGenCheckpointLoader", "dit_base"), ("DeepGenVLMLoader", "vlm_name"), ("DeepGenVLMLoader", "lora"),
          ("DeepGenSCBLoader", "scb_name"), ("DeepGenDiTLoader", "dit_name"), ("DeepGenDiTLoader", "dit_base"),
          ("DeepGenVAELoader", "vae_name")]


@pytest.mark.parametrize("node, name", INPUTS)
def test_traversal_refused_by_validation_for_every_path_input(comfy_server, release, node, name):
    first = {"DeepGenCheckpointLoader": "ckpt_name", "DeepGenVLMLoader": "vlm_name", "DeepGenSCBLoader": "scb_name",
             "DeepGenDiTLoader": "dit_name", "DeepGenVAELoader": "vae_name"}[node]
    for bad_value in TRAVERSALS:
        prompt = loader(node, RELEASE)
        prompt["1"]["inputs"][name if name != first else first] = bad_value
        if name != first:
            # ComfyUI 0.3.75 repeats a validate_inputs failure once per argument it names (and does not check V3
            # combos itself), so only the main path input is validated up front: the optional ones are refused by
            # the node before it reads anything, naming the input. Newer ComfyUI (0.28) checks V3 combo values
            # itself and refuses them at validation, also naming the input.
            try:
                msg = execution_error(comfy_server, prompt)["exception_message"]
            except comfy_server.PromptRejected as err:
                details = repr(err.body["node_errors"]["1"])
                assert name in details and "value_not_in_list" in details, (bad_value, details)
            else:
                assert msg.startswith(name), (bad_value, msg)
            continue
        with pytest.raises(comfy_server.PromptRejected) as err:
            comfy_server.post_prompt(prompt)
        details = repr(err.value.body["node_errors"]["1"])
        assert name in details and "not one of the DeepGen models found" in details, (bad_value, details)
