"""deepgen_model.validation: damaged weight files, absurd configs and hostile prompt text are refused up front,
with a DeepGenLoadError / DeepGenInputError naming the file (or input), the component and the fix, before any
model is built (the builders are replaced by tripwires in the loader tests)."""
from __future__ import annotations

import json
import math
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from deepgen_model import config_checks, inputs, loading, validation, vlm_loading
from deepgen_model.conditioning import encode
from deepgen_model.errors import DeepGenInputError, DeepGenLoadError


def _raw(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    """A file laid out like safetensors: u64 header length, header, data (any of them may be a lie)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def _refused(path, fragment: str, component="DiT") -> str:
    tracemalloc.start()
    try:
        with pytest.raises(DeepGenLoadError) as err:
            validation.check_safetensors(path, component)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert msg.startswith(f"{component} file {path}:"), msg
    assert fragment in msg, msg
    assert "again" in msg, msg  # the fix: download (or re-create) the file again
    assert peak < 4 << 20, f"reading a hostile header allocated {peak} bytes"
    return msg


F32_4 = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

HEADERS = {  # name: (header, data, claimed length, expected fragment)
    "length 2^64-1": (b"{}", b"", 2**64 - 1, "header claims 18446744073709551615 bytes"),
    "length 2^62": (b"{}", b"", 2**62, "but the whole file is"),
    "length 10 GiB": (b"{}", b"", 10 << 30, "header claims 10737418240 bytes"),
    "not JSON": (b"{not json", b"", None, "is not valid JSON"),
    "JSON list": (b"[1, 2]", b"", None, "not a JSON object"),
    "not UTF-8": (b"{\xff\xfe}", b"", None, "not UTF-8"),
    "nested 50k": (b'{"a":' * 50000 + b"1" + b"}" * 50000, b"", None, "nests too deeply"),
    "entry is a string": ({"w": "F32"}, b"", None, "described by a str"),
    "no dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "'w' has no dtype"),
    "unknown dtype": ({"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
    "negative shape": ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                       "not a list of non-negative integers"),
    "shape string": ({"w": {"dtype": "F32", "shape": "abc", "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape abc"),
    "shape of booleans": ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, None, "shape"),
    "offsets outside": ({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}, b"\0" * 8, None,
                        "is truncated: it holds 8 bytes of tensor data but its header describes 400"),
    "offsets vs dtype x shape": ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                                 "needs 12 bytes but its data_offsets span 8"),
    "overlapping": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "overlapping"),
    "trailing bytes": (F32_4, b"\0" * 12, None, "trailing bytes"),
    "metadata not strings": ({"__metadata__": {"a": 1}, **F32_4}, b"\0" * 8, None, "__metadata__"),
    "zero-size, dimension 2^63": ({"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}, b"", None,
                                  "a dimension beyond 2^63 - 1"),
    "zero-size, dimension 2^64": ({"w": {"dtype": "BF16", "shape": [2**64, 0], "data_offsets": [0, 0]}}, b"", None,
                                  "a dimension beyond 2^63 - 1"),
    "F32 data declared I32": ({"w": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                              "tensor 'w' is declared I32, but the DiT (transformer/) holds floating-point weights"),
    "F32 data declared U32": ({"w": {"dtype": "U32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                              "is declared U32"),
    "declared BOOL": ({"w": {"dtype": "BOOL", "shape": [8], "data_offsets": [0, 8]}}, b"\0" * 8, None, "declared BOOL"),
    "declared F8_E4M3": ({"w": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, b"\0" * 8, None,
                         "declared F8_E4M3"),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_hostile_headers_are_refused_without_allocating(tmp_path, case):
    header, data, length, fragment = HEADERS[case]
    _refused(_raw(tmp_path / "diffusion_pytorch_model.safetensors", header, data, length), fragment)


def test_empty_short_truncated_folder_and_oversized_header(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    _refused(f, "is empty (0 bytes)", "SCB")
    f.write_bytes(b"abc")
    _refused(f, "only 3 bytes", "SCB")
    save_file({"w": torch.zeros(64)}, str(f))
    f.write_bytes(f.read_bytes()[:-10])  # a download cut short
    _refused(f, "truncated", "SCB")
    d = tmp_path / "model-00001-of-00002.safetensors"
    d.mkdir()
    _refused(d, "is a folder where a .safetensors file should be", "VLM")
    big = tmp_path / "big.safetensors"  # a header of 100 MiB + 1 inside a (sparse) file that is large enough
    with open(big, "wb") as fh:
        fh.write(struct.pack("<Q", (100 << 20) + 1) + b"{")
        fh.truncate((100 << 20) + 64)
    _refused(big, "more than the safetensors limit", "VAE")


def test_valid_file_passes_and_returns_its_header(tmp_path):
    f = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(5, dtype=torch.bfloat16), "c": torch.zeros(0)}, str(f),
              metadata={"format": "pt"})
    header = validation.check_safetensors(f, "DiT")
    assert header["a"]["shape"] == [3, 2] and header["b"]["dtype"] == "BF16" and header["__metadata__"] == {"format": "pt"}


# ------------------------------------------------------------------ through the loaders, nothing built


@pytest.fixture
def release(tiny_layouts, tmp_path):
    """A private copy of the tiny diffusers release, to damage."""
    return Path(shutil.copytree(tiny_layouts["diffusers"], tmp_path / "release"))


@pytest.fixture
def tripwires(monkeypatch):
    """Building any model fails the test: refusals must come before construction."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from deepgen_model import scb

    def boom(*a, **k):
        raise AssertionError("a model was built from a file that should have been refused")

    for cls in (SD3Transformer2DModel, AutoencoderKL, Qwen2_5_VLForConditionalGeneration):
        monkeypatch.setattr(cls, "from_pretrained", boom)
        monkeypatch.setattr(cls, "from_config", boom, raising=False)
        monkeypatch.setattr(cls, "_from_config", boom, raising=False)
    monkeypatch.setattr(scb.SCBConnector, "__init__", boom)


LOADERS = {"DiT": ("transformer/diffusion_pytorch_model.safetensors", lambda r: loading.load_dit(r)),
           "VAE": ("vae/diffusion_pytorch_model.safetensors", lambda r: loading.load_vae(r)),
           "SCB": ("connector/model.safetensors", lambda r: loading.load_scb(r)),
           "VLM": ("vlm/model-00002-of-00002.safetensors", lambda r: vlm_loading.load_vlm(r))}


def _damage(f: Path, how: str):
    if how == "empty":
        f.write_bytes(b"")
    elif how == "2^62":
        f.write_bytes(struct.pack("<Q", 2**62) + f.read_bytes()[8:])
    elif how == "folder":
        f.unlink()
        f.mkdir()
    elif how in ("no dtype", "F32 as I32"):
        n = struct.unpack("<Q", f.read_bytes()[:8])[0]
        raw = f.read_bytes()
        header = json.loads(raw[8:8 + n])
        entry = next(v for k, v in sorted(header.items()) if k != "__metadata__" and v["dtype"] == "F32")
        if how == "no dtype":
            del entry["dtype"]
        else:  # same size, other meaning: the tensor's bytes would be read as integers
            entry["dtype"] = "I32"
        text = json.dumps(header).encode()
        f.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


@pytest.mark.parametrize("how", ["empty", "2^62", "folder", "no dtype", "F32 as I32"])
@pytest.mark.parametrize("component", list(LOADERS))
def test_damaged_weights_are_named_by_every_loader(release, tripwires, component, how):
    rel, load = LOADERS[component]
    f = release / rel
    assert f.exists(), sorted(p.name for p in f.parent.iterdir())
    _damage(f, how)
    with pytest.raises(DeepGenLoadError) as err:
        load(release)
    msg = str(err.value)
    assert msg.startswith(f"{component} file {f}:") and "again" in msg, msg
    if how == "F32 as I32":
        assert "is declared I32, but" in msg and "floating-point weights" in msg, msg


def test_integer_tensors_for_weights_are_refused_also_from_model_pt():
    """A native model.pt is no safetensors file: its tensors are checked where they are assigned."""
    from deepgen_model.assign import assign

    with torch.device("meta"):
        model = torch.nn.Linear(2, 3)
    with pytest.raises(DeepGenLoadError, match=r"^model\.pt: integer tensors where weights are floating point "
                                               r"\(1\): weight \(int32\)"):
        assign(model, {"weight": torch.zeros(3, 2, dtype=torch.int32), "bias": torch.zeros(3)}, "model.pt")


def _edit_json(path: Path, change):
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(change(cfg)))


def _set(**kv):
    def change(cfg):
        for k, v in kv.items():
            *parents, last = k.split(".")
            node = cfg
            for p in parents:
                node = node[p]
            node[last] = v
        return cfg
    return change


CONFIGS = [  # (component, config file, change, fragment)
    ("DiT", "transformer/config.json", _set(num_layers=-1), "num_layers is -1, must be an integer in 1..1024"),
    ("DiT", "transformer/config.json", _set(pos_embed_max_size=10**6), "pos_embed_max_size is 1000000"),
    ("DiT", "transformer/config.json", _set(pos_embed_max_size=1000), "implies at least 192,000,000 parameters"),
    ("DiT", "transformer/config.json", _set(num_layers=4), "says 4 transformer blocks (num_layers) but the weights hold 3"),
    ("DiT", "transformer/config.json", _set(num_attention_heads="abc"), "num_attention_heads is \"abc\""),
    ("DiT", "transformer/config.json", lambda c: [c], "is a JSON list, not an object of settings"),
    ("VAE", "vae/config.json", _set(block_out_channels=[4096] * 4), "implies at least"),
    ("VAE", "vae/config.json", _set(norm_num_groups=3), "not all divisible by norm_num_groups 3"),
    ("SCB", "connector/config.json", _set(num_attention_heads=0), "num_attention_heads is 0"),
    ("SCB", "connector/config.json", _set(num_attention_heads=-32), "num_attention_heads is -32"),
    ("SCB", "connector/config.json", _set(num_attention_heads="abc"), "num_attention_heads is \"abc\""),
    ("SCB", "connector/config.json", _set(num_attention_heads=7), "not divisible by num_attention_heads 7"),
    ("SCB", "connector/config.json", lambda c: [c], "is a JSON list"),
    ("VLM", "vlm/config.json", _set(max_position_embeddings=0), "max_position_embeddings is 0"),
    ("VLM", "vlm/config.json", _set(hidden_size=10**9), "hidden_size is 1000000000"),
    ("VLM", "vlm/config.json", _set(intermediate_size=10**6), "implies at least"),
    ("VLM", "vlm/config.json", _set(num_hidden_layers=40), "says 40 decoder layers"),
    ("VLM", "vlm/config.json", _set(**{"vision_config.depth": 0}), "vision_config.depth is 0"),
    ("VLM", "vlm/config.json", _set(rms_norm_eps=float("nan")), "rms_norm_eps is NaN"),
    ("VLM", "vlm/config.json", lambda c: "hello", "is a JSON str"),
    # issue 20: every field the engine reads, and the architecture's fixed values
    ("VLM", "vlm/config.json", _set(hidden_act="relu"), 'hidden_act is "relu", must be "silu" (Qwen2.5-VL-3B'),
    ("VLM", "vlm/config.json", _set(hidden_act=3), "hidden_act is 3, must be \"silu\""),
    ("VLM", "vlm/config.json", _set(rope_scaling="x"),
     'rope_scaling must be {"type": "mrope", "mrope_section": [2, 3, 3]}'),
    ("VLM", "vlm/config.json", _set(rope_scaling=None), "rope_scaling must be"),
    ("VLM", "vlm/config.json", _set(**{"rope_scaling.mrope_section": [100, 100, 100]}),
     "rope_scaling.mrope_section is [100, 100, 100], must be [2, 3, 3]"),
    ("VLM", "vlm/config.json", _set(rope_scaling={"type": "linear", "factor": 2.0}),
     'rope_scaling type ["linear"] is not mrope'),
    ("VLM", "vlm/config.json", _set(rope_theta=10.0), "rope_theta is 10.0, must be 1000000.0"),
    ("VLM", "vlm/config.json", _set(torch_dtype="abc"), 'torch_dtype is "abc", must be one of "float32"'),
    ("VLM", "vlm/config.json", _set(torch_dtype=5), "torch_dtype is 5"),
    ("VLM", "vlm/config.json", _set(**{"vision_config.fullatt_block_indexes": [7]}),
     "vision_config.fullatt_block_indexes [7] must name distinct vision blocks in increasing order, below "
     "vision_config.depth 2"),
    ("VLM", "vlm/config.json", _set(**{"vision_config.fullatt_block_indexes": "x"}), "must be a list of integers"),
    ("VLM", "vlm/config.json", _set(**{"vision_config.hidden_act": "gelu"}), 'vision_config.hidden_act is "gelu"'),
    ("VLM", "vlm/config.json", _set(**{"vision_config.window_size": 56}),
     "vision_config.window_size is 56, must be 112"),
    ("VLM", "vlm/config.json", _set(**{"vision_config.spatial_merge_size": 1}), "spatial_merge_size is 1, must be 2"),
    ("VLM", "vlm/config.json", _set(model_type="llama"), 'model_type is "llama", must be "qwen2_5_vl"'),
    ("VLM", "vlm/config.json", _set(use_sliding_window=True), "use_sliding_window is true, must be false"),
    ("VLM", "vlm/config.json", _set(image_token_id=10**6), "image_token_id 1000000 is not below vocab_size 526"),
    ("VLM", "vlm/config.json", _set(image_token_id="5"), 'image_token_id is "5", must be an integer'),
    ("DiT", "transformer/config.json", _set(qk_norm="layer_norm"), 'qk_norm is "layer_norm", must be "rms_norm"'),
    ("DiT", "transformer/config.json", _set(in_channels=4), "in_channels is 4, must be 16"),
    ("VAE", "vae/config.json", _set(scaling_factor=0.18215), "scaling_factor is 0.18215, must be 1.5305 (the SD3 VAE)"),
    ("VAE", "vae/config.json", _set(down_block_types=["DownBlock2D"] * 4),
     'down_block_types must be "DownEncoderBlock2D"'),
    ("SCB", "connector/config.json", _set(hidden_act="relu"), 'hidden_act is "relu", must be "gelu_pytorch_tanh"'),
    ("scheduler", "scheduler/scheduler_config.json", _set(use_dynamic_shifting="yes"),
     'use_dynamic_shifting is "yes", must be true or false'),
    ("scheduler", "scheduler/scheduler_config.json", _set(use_dynamic_shifting=True, base_shift=float("nan")),
     "base_shift is NaN, must be a number in -10..10"),
    ("scheduler", "scheduler/scheduler_config.json", _set(use_dynamic_shifting=True, base_image_seq_len=4096),
     "use_dynamic_shifting needs base_image_seq_len 4096 below max_image_seq_len 4096"),
    ("scheduler", "scheduler/scheduler_config.json", _set(max_shift="1.15"), 'max_shift is "1.15", must be a number'),
    ("scheduler", "scheduler/scheduler_config.json", _set(time_shift_type="cubic"),
     'time_shift_type is "cubic", must be one of "exponential", "linear"'),
    ("scheduler", "scheduler/scheduler_config.json", _set(use_karras_sigmas=True),
     "use_karras_sigmas is true, must be false"),
    ("scheduler", "scheduler/scheduler_config.json", _set(_class_name="DDIMScheduler"),
     'must be "FlowMatchEulerDiscreteScheduler"'),
    ("scheduler", "scheduler/scheduler_config.json", _set(shift=-3), "shift is -3"),
]
CONFIG_LOADERS = {**{name: load for name, (_, load) in LOADERS.items()},
                  "scheduler": lambda r: loading.load_scheduler_config(r)}


@pytest.mark.parametrize("component, rel, change, fragment", CONFIGS, ids=[f"{c[0]}:{c[3][:40]}" for c in CONFIGS])
def test_absurd_configs_are_refused_before_building(release, tripwires, component, rel, change, fragment):
    _edit_json(release / rel, change)
    with pytest.raises(DeepGenLoadError) as err:
        CONFIG_LOADERS[component](release)
    msg = str(err.value)
    assert msg.startswith((f"{component} file {release / rel}:", f"{component} folder {release / Path(rel).parent}:"))
    assert fragment in msg, msg
    assert "again" in msg, msg


@pytest.mark.parametrize("field, token", [("image_token_id", "<|image_pad|>"),
                                          ("vision_start_token_id", "<|vision_start|>")])
def test_special_token_ids_must_be_the_tokenizers(release, field, token):
    """In the vocabulary, but not the tokenizer's id of that token: the image would silently be left out (issue 20)."""
    _edit_json(release / "vlm" / "config.json", _set(**{field: 5}))
    with pytest.raises(DeepGenLoadError) as err:
        vlm_loading.load_vlm(release)
    msg = str(err.value)
    config = release / "vlm" / "config.json"
    assert msg.startswith(f"VLM file {config}: {field} is 5, but the tokenizer's id of {token}"), msg
    assert "download both again" in msg


def test_config_that_is_not_json_and_a_folder_for_config(release, tripwires):
    (release / "transformer" / "config.json").write_text("{\"num_layers\": ")
    with pytest.raises(DeepGenLoadError, match=r"^DiT file .*transformer/config\.json: the file is not valid JSON"):
        loading.load_dit(release)
    (release / "vae" / "config.json").write_text("")
    with pytest.raises(DeepGenLoadError, match=r"^VAE file .*vae/config\.json: is empty"):
        loading.load_vae(release)
    (release / "connector" / "config.json").unlink()
    (release / "connector" / "config.json").mkdir()
    with pytest.raises(DeepGenLoadError, match=r"^SCB file .*connector/config\.json: is a folder"):
        loading.load_scb(release)


@pytest.mark.parametrize("name, text, fragment", [
    ("tokenizer.json", "not json", "tokenizer.json: the file is not valid JSON"),
    ("tokenizer_config.json", "[1, 2]", "tokenizer_config.json: is valid JSON but not an object"),
    ("vocab.json", "", "vocab.json: is empty"),
])
def test_tokenizer_files_that_are_not_json(release, name, text, fragment):
    f = release / "tokenizer" / name
    f.write_text(text)
    with pytest.raises(DeepGenLoadError) as err:
        vlm_loading.load_tokenizer(release / "tokenizer")
    msg = str(err.value)
    assert msg.startswith("tokenizer file") and fragment in msg and "again" in msg, msg


def test_converted_files_with_damaged_metadata(tmp_path, tiny, tripwires):
    f = tmp_path / "deepgen_dit.safetensors"
    state = {k: v.contiguous() for k, v in tiny.dit.state_dict().items()}
    meta = {"format": "deepgen-1.0", "component": "dit", "config": "{oops"}
    save_file(state, str(f), metadata=meta)
    with pytest.raises(DeepGenLoadError, match=r"^DiT file .*deepgen_dit\.safetensors: its embedded DiT config is not valid "
                                               r"JSON .*re-create deepgen_dit\.safetensors"):
        loading.load_dit(f)
    save_file(state, str(f), metadata={**meta, "config": json.dumps({**dict(tiny.dit.config), "num_layers": 0})})
    with pytest.raises(DeepGenLoadError, match="num_layers is 0"):
        loading.load_dit(f)
    v = tmp_path / "deepgen_vlm.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, str(v),
              metadata={"format": "deepgen-1.0", "component": "vlm", "config": json.dumps(tiny.vlm_config),
                        "tokenizer_files": "[not json"})
    with pytest.raises(DeepGenLoadError, match=r"^tokenizer file .*deepgen_vlm\.safetensors: the embedded tokenizer_files"):
        vlm_loading.load_vlm(v)
    with pytest.raises(DeepGenLoadError, match=r"^tokenizer file .*deepgen_vlm\.safetensors: the embedded tokenizer_files"):
        vlm_loading.load_release_tokenizer(v)  # the prompt preview's way to the tokenizer, without the VLM
    save_file(state, str(f), metadata={**meta, "config": json.dumps(dict(tiny.dit.config)), "scheduler_config": "{oops"})
    with pytest.raises(DeepGenLoadError, match=r"^scheduler file .*deepgen_dit\.safetensors: its embedded scheduler config"):
        loading.load_scheduler_config(f)


def test_intact_release_still_loads(release):
    assert loading.load_dit(release).config.num_layers == 3
    assert loading.load_scb(release).meta_queries.shape[0] == 128


# ------------------------------------------------------------------ prompts, cfg, steps


@pytest.fixture(scope="module")
def scb(tiny):
    from deepgen_model.scb import SCBConfig, SCBConnector

    b = SCBConnector(SCBConfig.from_state_dict(tiny.scb_state, tiny.scb_heads)).eval()
    b.load_state_dict(tiny.scb_state, strict=True)
    return b


@pytest.mark.parametrize("token", ["<|image_pad|>", "<|video_pad|>"])
def test_image_tokens_in_user_text_name_the_prompt(tiny, scb, token):
    for kwargs, name in (({"prompts": f"a {token} cat", "negative_prompts": ""}, "prompt"),
                         ({"prompts": "a cat", "negative_prompts": f"blurry{token}"}, "negative_prompt")):
        with pytest.raises(DeepGenInputError) as err:
            encode(tiny.vlm_base, tiny.tokenizer, scb, **kwargs)
        assert str(err.value).startswith(f"{name} contains {token}"), err.value
    image = [torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))]
    with pytest.raises(DeepGenInputError, match=r"^prompt contains"):
        encode(tiny.vlm_base, tiny.tokenizer, scb, f"{token}{token}", "", image, max_side=32)


def test_lone_surrogates_in_user_text_name_the_input(tiny, scb):
    """A JSON "\\ud800" escape parses into a lone surrogate, which the tokenizer rejects with a raw TypeError."""
    for kwargs, name in (({"prompts": "a \ud800 cat", "negative_prompts": ""}, "prompt"),
                         ({"prompts": "a cat", "negative_prompts": "\udc00"}, "negative_prompt")):
        with pytest.raises(DeepGenInputError) as err:
            encode(tiny.vlm_base, tiny.tokenizer, scb, **kwargs)
        assert str(err.value).startswith(f"{name} contains an unpaired surrogate (U+"), err.value
    inputs.check_prompt("caf\u00e9 \U0001f431", "prompt")  # real characters outside the BMP are fine


def test_other_special_tokens_are_parsed_as_special_tokens_like_the_official_code(tiny, scb):
    """The release tokenises the user text with special-token parsing on: "<|im_end|>" typed by a user is the
    single special token (not its characters), and conditioning still works. Documented in docs/reliability.md."""
    for token in ("<|im_end|>", "<|vision_start|>", "<|endoftext|>"):
        assert tiny.tokenizer(token, add_special_tokens=False)["input_ids"] == [tiny.token_ids[token]]
        cond = encode(tiny.vlm_base, tiny.tokenizer, scb, f"a cat {token} on a mat", "")
        assert torch.isfinite(cond.seq).all()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -1.0, 100.5, "4", None, True])
def test_cfg_must_be_finite(value):
    with pytest.raises(DeepGenInputError, match=r"^cfg is .*finite number in 0\.\.100"):
        inputs.check_cfg(value)


@pytest.mark.parametrize("value", [0, -1, 1_000_000, 1.5, "50", True, None])
def test_steps_range(value):
    with pytest.raises(DeepGenInputError, match=r"^steps is .*whole number in 1\.\.1000"):
        inputs.check_steps(value, 1000)
    assert inputs.check_steps(1, 1000) == 1 and inputs.check_cfg(0) == 0.0 and inputs.check_cfg(4) == 4.0


@pytest.mark.parametrize("value,nearest", [(0, 1), (-3, 1), (1001, 1000), (2.5, 3)])
def test_a_refused_step_count_offers_the_nearest_valid_one(value, nearest):
    with pytest.raises(DeepGenInputError, match=rf"\(nearest: {nearest}; the authors use 50\)\.$"):
        inputs.check_steps(value)


@pytest.mark.parametrize("size,nearest", [((100, 100), "96x96"), ((512, 500), "512x496"), ((8, 8), "16x16"),
                                          ((0, 520), "16x528")])
def test_a_refused_output_size_offers_the_nearest_valid_one(size, nearest):
    with pytest.raises(DeepGenInputError, match=rf"must be a positive multiple of 16, .*nearest valid size is {nearest}\.$"):
        inputs.check_output_size(*size)
    assert inputs.check_output_size(512, 768) == (512, 768)


@pytest.mark.parametrize("value", [0, -32, 48, 100, 32.5])
def test_max_side_is_a_positive_multiple_of_32(value):
    with pytest.raises(DeepGenInputError, match=rf"^max_side must be a positive multiple of 32, got {value}\.$"):
        inputs.check_max_side(value)
    assert inputs.check_max_side(32) == 32 and inputs.check_max_side(4096) == 4096


# ------------------------------------------------------------------ seeded fuzz, bounded in time

def _random_json(rng, depth=0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**62, -(2**63), 10**9, 3])
    if kind == 1:
        return rng.choice([1.5, float("nan"), float("inf"), -0.0, 1e300])
    if kind == 2:
        return rng.choice(["", "abc", "F32", "BF16", "\u00e9", "{"])
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return [rng.randrange(-2, 5) for _ in range(rng.randrange(4))]
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["dtype", "shape", "data_offsets", "w", "__metadata__", "x"]): _random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def test_fuzz_safetensors_reader(tmp_path):
    """Random damage to a valid file: the checker either accepts (and then safetensors itself reads every tensor)
    or raises DeepGenLoadError naming the file; never another exception."""
    import random
    import time

    from safetensors import safe_open

    rng = random.Random(20260213)
    valid = save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16),
                  "c": torch.zeros(3, dtype=torch.float64)}, metadata={"format": "pt"})
    n = struct.unpack("<Q", valid[:8])[0]
    f = tmp_path / "fuzz.safetensors"
    deadline, accepted, refused = time.monotonic() + 20, 0, 0
    for i in range(1500):
        if time.monotonic() > deadline:
            break
        data = bytearray(valid)
        op = rng.randrange(7)
        if op == 0:  # flip bytes in the header
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(8, 8 + n)] = rng.randrange(256)
        elif op == 1:  # a lying length
            data[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, len(valid), 2**63, rng.randrange(2**64)]))
        elif op == 2:  # cut anywhere
            data = data[:rng.randrange(len(data))]
        elif op == 3:  # trailing garbage
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 4:  # a random JSON header
            text = json.dumps(_random_json(rng)).encode()
            data = bytearray(struct.pack("<Q", len(text)) + text + bytes(rng.randrange(3) * 4))
        elif op == 5:  # a valid header with one field of one entry replaced
            header = json.loads(valid[8:8 + n])
            entry = header[rng.choice(["a", "b", "c"])]
            entry[rng.choice(["dtype", "shape", "data_offsets"])] = _random_json(rng)
            text = json.dumps(header).encode()
            data = bytearray(struct.pack("<Q", len(text)) + text + valid[8 + n:])
        else:  # another dtype and a shape that spans the same bytes (or none, or huge dimensions of zero size)
            header = json.loads(valid[8:8 + n])
            entry = header[rng.choice(["a", "b", "c"])]
            entry["dtype"] = rng.choice(sorted(validation.DTYPE_BITS) + ["F32", "BF16", "f32", "I4"])
            span = entry["data_offsets"][1] - entry["data_offsets"][0]
            count = 8 * span // validation.DTYPE_BITS.get(entry["dtype"], 8)
            entry["shape"] = rng.choice([[count], [1, count], [count, 1, 1], [0, 2**rng.randrange(60, 66)],
                                         [2**63 - 1, 0], [count, 0]])
            text = json.dumps(header).encode()
            data = bytearray(struct.pack("<Q", len(text)) + text + valid[8 + n:])
        f.write_bytes(bytes(data))
        try:
            header = validation.check_safetensors(f, "VAE")
        except DeepGenLoadError as e:
            assert str(e).startswith(f"VAE file {f}:"), e
            refused += 1
            continue
        assert all(e["dtype"] in validation.WEIGHT_DTYPES for k, e in header.items() if k != "__metadata__"), header
        with safe_open(str(f), framework="pt") as st:  # accepted: the library must read every tensor
            for k in st.keys():
                assert list(st.get_tensor(k).shape) == header[k]["shape"]
        accepted += 1
    assert refused > 100 and accepted > 5, (accepted, refused)


def test_fuzz_weight_dtypes_and_shapes_through_the_loaders(release):
    """Seeded, bounded in time: one tensor of a component's file relabelled (another dtype over the same bytes,
    another shape, zero-size shapes with huge dimensions): the loader refuses it naming the file and the tensor,
    or, for a relabelling that changes nothing (e.g. the same dtype), loads a model that computes finite values."""
    import random
    import time

    rng = random.Random(4)
    files = {"SCB": ("connector/model.safetensors", lambda: loading.load_scb(release)),
             "DiT": ("transformer/diffusion_pytorch_model.safetensors", lambda: loading.load_dit(release)),
             "VAE": ("vae/diffusion_pytorch_model.safetensors", lambda: loading.load_vae(release))}
    intact = {c: (release / rel).read_bytes() for c, (rel, _) in files.items()}
    deadline, refused, loaded = time.monotonic() + 15, 0, 0
    for i in range(400):
        if time.monotonic() > deadline:
            break
        component = rng.choice(sorted(files))
        rel, load = files[component]
        raw = intact[component]
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        name = rng.choice(sorted(k for k in header if k != "__metadata__"))
        entry = header[name]
        span = entry["data_offsets"][1] - entry["data_offsets"][0]
        entry["dtype"] = rng.choice(["F32", "F32", "I32", "U32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E5M2"])
        count = 8 * span // validation.DTYPE_BITS[entry["dtype"]]
        entry["shape"] = rng.choice([entry["shape"], [count], [count, 1], [0, 2**rng.randrange(62, 65)]])
        text = json.dumps(header).encode()
        (release / rel).write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
        model = None
        try:
            model = load()
            assert entry["dtype"] in validation.WEIGHT_DTYPES, (name, entry)
            assert all(torch.isfinite(p).all() for p in model.parameters()), (component, name, entry)
            loaded += 1
        except DeepGenLoadError as e:
            assert str(release / rel) in str(e) or str((release / rel).parent) in str(e), e
            refused += 1
        finally:
            model = None  # the loaders may map the file: drop the model before the file is written again
            (release / rel).write_bytes(raw)
    assert refused > 20 and loaded > 2, (refused, loaded)


def test_fuzz_config_checks(tiny):
    """Random values in random fields of the tiny configs: check_config / check_tensors accept or raise
    DeepGenLoadError; whatever passes both never implies more parameters than the weights hold."""
    import random
    import time

    from deepgen_model import tiny as deepgen_tiny

    rng = random.Random(7)
    shapes = {"DiT": {k: tuple(v.shape) for k, v in tiny.dit.state_dict().items()},
              "VAE": {k: tuple(v.shape) for k, v in tiny.vae.state_dict().items()},
              "SCB": {k: tuple(v.shape) for k, v in tiny.scb_state.items()},
              "VLM": {k: tuple(v.shape) for k, v in tiny.vlm_merged_state.items()}}
    configs = {"DiT": dict(tiny.dit.config), "VAE": dict(tiny.vae.config), "SCB": dict(deepgen_tiny.TINY_CONNECTOR),
               "VLM": json.loads(json.dumps(deepgen_tiny.TINY_VLM_CONFIG))}
    for name, cfg in configs.items():  # the intact configs pass
        config_checks.check_tensors(shapes[name], config_checks.check_config(json.loads(json.dumps(cfg, default=list)), name, "c"),
                                 name, "w")
    values = [-1, 0, 1, 2, 3, 10**6, 10**9, 2**62, "abc", "", None, 1.5, float("nan"), True, [], {}, [1, 2], [-1]]
    deadline, refused = time.monotonic() + 15, 0
    for i in range(3000):
        if time.monotonic() > deadline:
            break
        name = rng.choice(list(configs))
        cfg = json.loads(json.dumps(configs[name], default=list))
        for _ in range(rng.randrange(1, 3)):
            node = cfg["vision_config"] if name == "VLM" and rng.random() < 0.3 else cfg
            node[rng.choice(list(node))] = rng.choice(values)
        if rng.random() < 0.03:
            cfg = rng.choice([[cfg], "cfg", 3, None])
        try:
            checked = config_checks.check_config(cfg, name, "config.json")
            config_checks.check_tensors(shapes[name], checked, name, "weights")
        except DeepGenLoadError as e:
            assert str(e).startswith(f"{name} file "), e
            refused += 1
            continue
        low = config_checks._expectations(checked, name)[0]
        assert low <= sum(math.prod(s) for s in shapes[name].values())
    assert refused > 100


# ------------------------------------------------------------------ every config field, through the loaders

# what the fuzz below puts into a field: wrong types, the architecture's neighbours, and values of the right type
_FIELD_VALUES = [None, True, False, 0, 1, 2, 3, -1, 7, 14, 16, 112, 10**6, 2**62, 2**70, 0.5, 1e-6, 1e6, 1.5305, -2.5,
                 float("nan"), float("inf"), "", "abc", "silu", "gelu", "relu", "rms_norm", "float16", "bfloat16",
                 "mrope", "default", "linear", "exponential", "qwen2_5_vl", "llama", [], [1], [7], [1, 2],
                 [2, 3, 3], [100, 100, 100], ["full_attention"], {}, {"type": "mrope"},
                 {"type": "mrope", "mrope_section": [2, 3, 3]}, {"rope_type": "yarn", "factor": 4.0}]


def _near(value, rng):
    """A value close to a field's own: the same type, moved a little."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([-1, 1, value or 1])
    if isinstance(value, float):
        return value * rng.choice([0.5, 2.0, -1.0, 1.0 + 1e-6])
    if isinstance(value, list):
        return rng.choice([value[:-1], value + value[-1:], list(reversed(value))]) if value else [0]
    if isinstance(value, dict):
        out = dict(value)
        if out:
            key = rng.choice(sorted(out))
            out[key] = _near(out[key], rng)
        return out
    return value


class _Loaded:
    """The tiny diffusers release in a private folder, and what its intact components compute (the baseline)."""

    FILES = {"VLM": "vlm/config.json", "SCB": "connector/config.json", "DiT": "transformer/config.json",
             "VAE": "vae/config.json", "scheduler": "scheduler/scheduler_config.json"}

    def __init__(self, root: Path, scb_module):
        import transformers

        transformers.logging.set_verbosity_error()
        self.root, self.scb = root, scb_module
        self.configs = {c: json.loads((root / f).read_text()) for c, f in self.FILES.items()}
        g = torch.Generator().manual_seed(0)
        self.latent = torch.randn(1, 16, 8, 8, generator=g)
        self.context, self.pooled = torch.randn(1, 5, 32, generator=g), torch.randn(1, 32, generator=g)
        self.baseline = {c: self.run(c) for c in self.FILES}

    def run(self, component: str):
        """Load the component through its loader (the config as it is on disk now) and compute with it."""
        from deepgen_model.scheduler import sigmas_from_config

        with torch.no_grad():
            if component == "VLM":
                vlm, tokenizer = vlm_loading.load_vlm(self.root)
                return encode(vlm, tokenizer, self.scb, "a cat", "").seq
            if component == "SCB":
                return loading.load_scb(self.root)(torch.ones(1, 3, 6 * 64))[0]
            if component == "DiT":
                dit = loading.load_dit(self.root)
                return dit(hidden_states=self.latent, encoder_hidden_states=self.context,
                           pooled_projections=self.pooled, timestep=torch.tensor([500.0])).sample
            if component == "VAE":
                return loading.load_vae(self.root).decode(self.latent[:, :, :4, :4]).sample
            return sigmas_from_config(loading.load_scheduler_config(self.root), 8, image_seq_len=16)

    def write(self, component: str, cfg):
        (self.root / self.FILES[component]).write_text(json.dumps(cfg))


def _fields(cfg: dict, component: str) -> list[tuple[str, ...]]:
    """Every field path of a config and every field its SPECS name (vision fields under vision_config)."""
    if component == "VLM":
        spec = [(k,) for k in config_checks.SPECS["VLM"]] + [("vision_config", k) for k in config_checks.SPECS["VLM vision"]]
        have = [(k,) for k in cfg] + [("vision_config", k) for k in cfg["vision_config"]]
    else:
        spec, have = [(k,) for k in config_checks.SPECS[component]], [(k,) for k in cfg]
    # and, for the VLM, what transformers' own PretrainedConfig reads when a saved config carries it
    extra = [("rope_scaling", "mrope_section"), ("rope_scaling", "type"), *((k,) for k in _GENERIC)] \
        if component == "VLM" else []
    return sorted(set(spec + have + extra))


_GENERIC = ("return_dict", "output_hidden_states", "output_attentions", "torchscript", "pruned_heads",
            "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention", "problem_type",
            "id2label", "label2id", "layer_types", "text_config")


def _assign(cfg: dict, field: tuple[str, ...], value):
    node = cfg
    for k in field[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[field[-1]] = value


def _spec(component: str, field: tuple[str, ...]):
    table = config_checks.SPECS["VLM vision" if field[0] == "vision_config" else component]
    return table.get(field[-1]) if len(field) <= 2 and (field[0] == "vision_config" or len(field) == 1) else None


@pytest.mark.parametrize("text_config", [{"rope_type": "yarn", "factor": 4.0}, "sizes differ"])
def test_a_text_config_must_carry_the_language_models_sizes(text_config):
    """transformers builds the language model from text_config alone when a config has one: a partial one would
    build Qwen2.5-VL's default (7B) sizes, tens of GB, silently unrelated to the weights."""
    from deepgen_model import tiny as deepgen_tiny

    cfg = json.loads(json.dumps(deepgen_tiny.TINY_VLM_CONFIG))
    if text_config == "sizes differ":
        text_config = {k: cfg[k] for k in config_checks._TEXT_MODEL_FIELDS} | {"hidden_size": 2 * cfg["hidden_size"]}
    cfg["text_config"] = text_config
    with pytest.raises(DeepGenLoadError, match="text_config.*config.json|config.json.*text_config"):
        config_checks.check_config(cfg, "VLM", "vlm/config.json")


def test_fuzz_every_config_field_through_the_loaders(release, scb):
    """Seeded and bounded in time: each field of each config (every field SPECS names, and every field the tiny
    release's files carry) gets a random value, the config is written to the release and the component is loaded
    and run through its loader. It must end in one of:
      - DeepGenLoadError naming that config file (refused), or DeepGenInputError (a schedule refused at sampling);
      - loaded and run with finite output, where a field SPECS fixes to one value holds that value, and a field
        the engine does not read (not in SPECS) left the output bit-identical to the intact release's.
    Never another exception: a raw error from transformers or diffusers, or a picture that changed silently
    because of a field nobody checks, fails here."""
    import random
    import time

    rng = random.Random(20)
    loaded = _Loaded(release, scb)
    jobs = [(c, f) for c in loaded.FILES for f in _fields(loaded.configs[c], c)]
    rng.shuffle(jobs)
    deadline, seen = time.monotonic() + 25, {"refused": 0, "ran": 0, "fields": set()}
    for round_ in range(100):
        for component, field in jobs:
            if time.monotonic() > deadline and round_ > 0:
                break
            cfg = json.loads(json.dumps(loaded.configs[component]))
            old = cfg
            for k in field:
                old = old.get(k) if isinstance(old, dict) else None
            value = _near(old, rng) if old is not None and rng.random() < 0.4 else rng.choice(_FIELD_VALUES)
            _assign(cfg, field, value)
            loaded.write(component, cfg)
            try:
                out = loaded.run(component)
            except DeepGenLoadError as e:  # naming the config file, or the folder it is in
                assert str(release / loaded.FILES[component]).rsplit("/", 1)[0] in str(e), e
                seen["refused"] += 1
                continue
            except DeepGenInputError as e:
                assert component == "scheduler" and "scheduler" in str(e), e
                continue
            finally:
                loaded.write(component, loaded.configs[component])
            seen["ran"] += 1
            seen["fields"].add((component, field))
            assert torch.isfinite(out).all(), (component, field, value)
            spec = _spec(component, field)
            if spec is not None and spec[0] == config_checks.ONE_OF:
                assert any(config_checks._same(value, v) for v in spec[1]) or value is None, (component, field, value)
            elif spec is None and field[-1] not in ("rope_scaling", "type", "mrope_section"):
                assert torch.equal(out, loaded.baseline[component]), f"{component} {field}={value!r} changed the output"
        else:
            continue
        break
    print(f"{len(jobs)} fields, {seen['refused']} refused, {seen['ran']} ran")
    assert seen["refused"] > 30 and seen["ran"] > 10 and len(seen["fields"]) > 10, seen


def test_fuzz_json_files(tmp_path):
    import random

    rng = random.Random(3)
    f = tmp_path / "config.json"
    for _ in range(300):
        f.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))))
        try:
            validation.read_json(f, "DiT")
        except DeepGenLoadError as e:
            assert str(e).startswith(f"DiT file {f}:"), e


# ------------------------------------------------------------------ the real release passes

def test_real_size_configs_and_tensors_pass():
    """The released configs and the tensors they build (meta device, sizes of docs/inference.md#sizes) pass every check, in both
    VLM key namings: the bounds never refuse the real model."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from deepgen_model import configs
    from deepgen_model.scb import SCBConfig, SCBConnector
    from deepgen_model.keys import to_legacy

    with torch.device("meta"):
        dit = SD3Transformer2DModel.from_config(configs.get("dit")).state_dict()
        vae = AutoencoderKL.from_config(configs.get("vae")).state_dict()
        scb = SCBConnector(SCBConfig()).state_dict()
    with init_empty_weights():
        vlm = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig.from_dict(configs.get("vlm"))).state_dict()
    legacy = {to_legacy(k): v for k, v in vlm.items() if k != "lm_head.weight"}
    connector = {"hidden_size": 2048, "intermediate_size": 11946, "num_hidden_layers": 6, "num_attention_heads": 32,
                 "layer_norm_eps": 1e-6}
    for name, cfg, state in (("DiT", configs.get("dit"), dit), ("VAE", configs.get("vae"), vae),
                             ("SCB", connector, scb), ("SCB", json.loads(SCBConfig().to_json()), scb),
                             ("VLM", configs.get("vlm"), vlm), ("VLM", configs.get("vlm"), legacy),
                             ("VLM", Qwen2_5_VLConfig.from_dict(configs.get("vlm")).to_dict(), legacy),  # as saved
                             ("scheduler", configs.get("scheduler"), None)):
        config_checks.check_config(cfg, name, "config.json")
        if state is not None:
            config_checks.check_tensors(state, cfg, name, "weights")
    assert config_checks._expectations(configs.get("vlm"), "VLM")[0] <= 3_754_622_976  # the real VLM's elements (docs/inference.md#sizes)
