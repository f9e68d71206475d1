"""Refusing damaged weight files, absurd configs and hostile prompt text before anything is allocated.

Every check here reads only headers and small JSON files (never tensor data) and raises a
DeepGenLoadError that names the file, the component (VLM / SCB / DiT / VAE / tokenizer / scheduler),
what is wrong in plain words and the fix. The loaders call it where they open files and parse configs:

  check_safetensors(path, component) -> header   the safetensors header, checked against the file size
  check_config(cfg, component, path) -> cfg      types, positivity and plausible ranges of a config
  check_tensors(tensors, cfg, component, path)   tensor counts and anchor shapes against the config;
                                                 a config implying more parameters than the files hold
                                                 is refused (nothing is built from it)
  check_folder(folder, component)                the three above for a from_pretrained folder
  check_metadata(meta, component, path) -> cfg   the JSON fields embedded in a converted file
  parse_config(text, component, path) -> cfg     one embedded JSON config
  read_json(path, component)                     a small JSON file, errors named
  check_tokenizer(folder_or_files, source)       tokenizer files that must be JSON are JSON objects
  check_prompt(text, name)                       user text must not carry image placeholder tokens
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .constants import IMAGE_PAD_TOKEN
from .errors import DeepGenInputError, DeepGenLoadError

MAX_HEADER = 100_000_000  # bytes; the safetensors format's own limit on the JSON header
MAX_JSON = 64 * 1024 * 1024  # bytes; configs are KBs, Qwen's tokenizer.json ~7 MB
# bits per element of every safetensors dtype
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
              "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
              "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
# placeholders the engine fills with image/video features: typed by a user, they break the accounting
IMAGE_TOKENS = (IMAGE_PAD_TOKEN, "<|video_pad|>")
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "special_tokens_map.json",
                  "added_tokens.json", "chat_template.json")

COMPONENTS = ("VLM", "SCB", "DiT", "VAE", "tokenizer", "scheduler")
_ALIASES = {"vlm": "VLM", "qwen2_5_vlforconditionalgeneration": "VLM", "scb": "SCB", "bridge": "SCB",
            "connector": "SCB", "dit": "DiT", "transformer": "DiT", "sd3transformer2dmodel": "DiT", "vae": "VAE",
            "autoencoderkl": "VAE", "tokenizer": "tokenizer", "scheduler": "scheduler"}
_WHAT = {"VLM": "the VLM (the release's vlm/ folder or Qwen2.5-VL-3B-Instruct)", "SCB": "the SCB connector",
         "DiT": "the DiT (transformer/)", "VAE": "the VAE (vae/)", "tokenizer": "the tokenizer",
         "scheduler": "the scheduler"}


def component_name(component) -> str:
    """'VLM' / 'SCB' / 'DiT' / 'VAE' / 'tokenizer' / 'scheduler' from a name, a loader's word or a class name."""
    name = component if isinstance(component, str) else getattr(component, "__name__", str(component))
    if name in COMPONENTS:
        return name
    return _ALIASES.get(name.lower(), name)


def _redownload(path) -> str:
    return f"download {Path(path).name} again from the same release (the copy on disk is damaged or incomplete)"


def _fail(component, path, problem: str, fix: str | None = None):
    kind = "folder" if Path(str(path)).is_dir() and not Path(str(path)).suffix else "file"
    raise DeepGenLoadError(f"{component_name(component)} {kind} {path}: {problem}; {fix or _redownload(path)}.")


# ------------------------------------------------------------------ JSON files

def _loads(text, component, where, what: str, fix: str | None = None):
    if not isinstance(text, str):
        _fail(component, where, f"{what} is missing", fix)
    try:
        return json.loads(text)
    except RecursionError:
        _fail(component, where, f"{what} nests too deeply to be a real one", fix)
    except ValueError as e:
        _fail(component, where, f"{what} is not valid JSON ({e})", fix)


def _refuse_folder(path: Path, component, expected: str) -> None:
    if path.is_dir():
        _fail(component, path, f"is a folder where {expected} should be",
              f"remove the folder and download {path.name} again")


def read_json(path, component) -> object:
    """Parsed JSON of a small file; missing, a folder, too big, not UTF-8 or not JSON -> DeepGenLoadError."""
    path = Path(path)
    _refuse_folder(path, component, "a JSON file")
    try:
        size = path.stat().st_size
        if size > MAX_JSON:
            _fail(component, path, f"is {size} bytes, far larger than any config or tokenizer file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(component, path, f"is not UTF-8 text ({e.reason} at byte {e.start})")
    except OSError as e:
        _fail(component, path, f"could not be read ({e.strerror or e})", f"check that {path.name} exists and is readable")
    if not text.strip():
        _fail(component, path, f"is empty ({size} bytes)")
    return _loads(text, component, path, "the file")


# ------------------------------------------------------------------ safetensors headers

def check_safetensors(path, component) -> dict:
    """The safetensors header of `path` (tensor name -> {dtype, shape, data_offsets}, plus __metadata__),
    after checking it against the file: header length, JSON, every entry well-formed and its bytes exactly
    inside the data section. Reads at most the header; allocates nothing of the size it claims."""
    path = Path(path)
    _refuse_folder(path, component, "a .safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if size < 8 or len(prefix) < 8:
                _fail(component, path, "is empty (0 bytes)" if size == 0 else
                      f"is only {size} bytes, too short to be a safetensors file (the header alone needs 8)")
            n = int.from_bytes(prefix, "little")
            if n > size - 8:
                _fail(component, path, f"its header claims {n} bytes but the whole file is {size} bytes "
                                       "(truncated, or not a safetensors file)")
            if n > MAX_HEADER:
                _fail(component, path, f"its header claims {n} bytes, more than the safetensors limit of "
                                       f"{MAX_HEADER} (not a safetensors file)")
            raw = fh.read(n)
    except OSError as e:
        _fail(component, path, f"could not be read ({e.strerror or e})", f"check that {path.name} exists and is readable")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _fail(component, path, "its header is not UTF-8 text (not a safetensors file)")
    if not text.lstrip().startswith("{"):
        _fail(component, path, "its header is not a JSON object (not a safetensors file)")
    header = _loads(text, component, path, "its header")
    if not isinstance(header, dict):
        _fail(component, path, "its header is not a JSON object (not a safetensors file)")
    _check_entries(header, size - 8 - n, component, path)
    return header


def _check_entries(header: dict, data_size: int, component, path) -> None:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        _fail(component, path, "its __metadata__ is not a map of strings")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            _fail(component, path, f"tensor {name!r} is described by a {type(entry).__name__}, not "
                                   "{dtype, shape, data_offsets}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype is None:
            _fail(component, path, f"tensor {name!r} has no dtype")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            _fail(component, path, f"tensor {name!r} has an unknown dtype {str(dtype)[:40]!r}")
        if not _ints(shape):
            _fail(component, path, f"tensor {name!r} has shape {str(shape)[:80]}, not a list of non-negative integers")
        if not (_ints(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1] <= data_size):
            _fail(component, path, f"tensor {name!r} has data_offsets {str(offsets)[:80]} outside the file's "
                                   f"{data_size} data bytes (truncated or corrupted)")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits != 8 * (offsets[1] - offsets[0]):
            _fail(component, path, f"tensor {name!r} ({dtype} {list(shape)}) needs {bits / 8:.0f} bytes but its "
                                   f"data_offsets span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            _fail(component, path, f"tensor {name!r} starts at byte {begin} of the data, expected {end} "
                                   "(overlapping or missing data)")
        end = stop
    if end != data_size:
        _fail(component, path, f"its tensors describe {end} data bytes but the file holds {data_size} "
                               f"({'truncated' if end > data_size else 'trailing bytes'})")


def _ints(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


# ------------------------------------------------------------------ configs

INT, FLOAT, INTS = "int", "float", "ints"
# field: (kind, low, high, required). Ranges are generous (the release's values are far inside them);
# they exist to refuse what cannot be a model: negatives, zeros, strings, sizes that would need terabytes.
_DIM, _COUNT = (1, 1 << 16), (1, 1024)
SPECS = {
    "VLM": {"hidden_size": (INT, *_DIM, True), "num_hidden_layers": (INT, *_COUNT, True),
            "num_attention_heads": (INT, *_COUNT, True), "num_key_value_heads": (INT, *_COUNT, False),
            "intermediate_size": (INT, 1, 1 << 20, True), "vocab_size": (INT, 1, 1 << 22, True),
            "max_position_embeddings": (INT, 1024, 1 << 24, True), "rms_norm_eps": (FLOAT, 0, 1, False),
            "rope_theta": (FLOAT, 0, 1e12, False), "image_token_id": (INT, 0, 1 << 22, False)},
    "VLM vision": {"depth": (INT, *_COUNT, True), "hidden_size": (INT, *_DIM, True), "num_heads": (INT, *_COUNT, True),
                   "intermediate_size": (INT, 1, 1 << 20, True), "out_hidden_size": (INT, *_DIM, False),
                   "patch_size": (INT, 1, 1024, False), "spatial_merge_size": (INT, 1, 64, False),
                   "temporal_patch_size": (INT, 1, 64, False), "window_size": (INT, 1, 1 << 16, False),
                   "in_chans": (INT, 1, 64, False)},
    "SCB": {"hidden_size": (INT, *_DIM, False), "num_attention_heads": (INT, *_COUNT, False),
            "intermediate_size": (INT, 1, 1 << 20, False), "num_hidden_layers": (INT, *_COUNT, False),
            "layer_norm_eps": (FLOAT, 0, 1, False), "llm_hidden_size": (INT, *_DIM, False),
            "num_stacked_layers": (INT, *_COUNT, False), "num_queries": (INT, 1, 1 << 16, False),
            "pooled_projection_dim": (INT, *_DIM, False), "joint_attention_dim": (INT, *_DIM, False)},
    "DiT": {"num_layers": (INT, *_COUNT, True), "num_attention_heads": (INT, *_COUNT, True),
            "attention_head_dim": (INT, 1, 4096, True), "patch_size": (INT, 1, 64, False),
            "in_channels": (INT, 1, 4096, False), "out_channels": (INT, 1, 4096, False),
            "joint_attention_dim": (INT, *_DIM, False), "caption_projection_dim": (INT, *_DIM, False),
            "pooled_projection_dim": (INT, *_DIM, False), "pos_embed_max_size": (INT, 1, 4096, False),
            "sample_size": (INT, 1, 1 << 16, False), "dual_attention_layers": (INTS, 0, 1023, False)},
    "VAE": {"in_channels": (INT, 1, 64, False), "out_channels": (INT, 1, 64, False),
            "latent_channels": (INT, 1, 1024, False), "block_out_channels": (INTS, 1, 1 << 14, True),
            "layers_per_block": (INT, 1, 64, False), "norm_num_groups": (INT, 1, 1024, False),
            "sample_size": (INT, 1, 1 << 16, False), "scaling_factor": (FLOAT, 0, 1e6, False),
            "shift_factor": (FLOAT, -1e6, 1e6, False)},
    "scheduler": {"num_train_timesteps": (INT, 1, 1 << 20, False), "shift": (FLOAT, 0, 1e4, False)},
}
_CONFIG_FILE = {"VLM": "config.json", "SCB": "config.json", "DiT": "config.json", "VAE": "config.json",
                "scheduler": "scheduler_config.json"}


def check_config(cfg, component, path) -> dict:
    """A parsed config checked for types, positivity, plausible ranges and the relations the architecture
    needs; returned unchanged. Unknown fields pass untouched."""
    component = component_name(component)
    what = f"{component} config"
    if not isinstance(cfg, dict):
        _fail(component, path, f"the {what} is a JSON {type(cfg).__name__ if cfg is not None else 'null'}, "
                               "not an object of settings", _config_fix(component, path))
    if component == "VLM":
        _check_fields(_vlm_text(cfg), SPECS["VLM"], component, path)
        vision = cfg.get("vision_config")
        if not isinstance(vision, dict):
            _fail(component, path, "the VLM config has no vision_config object", _config_fix(component, path))
        _check_fields(vision, SPECS["VLM vision"], component, path, "vision_config.")
    elif component in SPECS:
        _check_fields(cfg, SPECS[component], component, path)
    for problem in _relations(cfg, component):
        _fail(component, path, f"the {what} is inconsistent: {problem}", _config_fix(component, path))
    return cfg


def _config_fix(component, path) -> str:
    name = Path(str(path)).name
    if name.endswith(".safetensors"):
        return f"re-create {name} with `python -m deepgen_model.convert` from an intact release"
    return (f"download {_CONFIG_FILE.get(component, 'config.json')} of {_WHAT.get(component, component)} again "
            "(it must come from the same release as the weights)")


def _vlm_text(cfg: dict) -> dict:
    """Text settings: flat in hub configs (transformers 4.x), under text_config when saved by 5.x."""
    text = cfg.get("text_config")
    return {**cfg, **text} if isinstance(text, dict) else cfg


def _check_fields(cfg: dict, spec: dict, component, path, prefix: str = "") -> None:
    for field, (kind, lo, hi, required) in spec.items():
        if field not in cfg or cfg[field] is None:
            if required:
                _fail(component, path, f"the {component} config has no {prefix}{field}", _config_fix(component, path))
            continue
        value = cfg[field]
        values = value if kind == INTS and isinstance(value, list) else [value]
        ok = (kind != INTS or isinstance(value, list)) and all(_in_range(v, kind, lo, hi) for v in values)
        if not ok:
            rule = {INT: "an integer", FLOAT: "a number", INTS: "a list of integers"}[kind]
            bound = f"in {lo}..{hi}" if kind != FLOAT else f"in ({lo}, {hi}]" if lo == 0 else f"in {lo}..{hi}"
            _fail(component, path, f"{prefix}{field} is {json.dumps(value)[:60]}, must be {rule} {bound}",
                  _config_fix(component, path))


def _in_range(v, kind, lo, hi) -> bool:
    if isinstance(v, bool):
        return False
    if kind in (INT, INTS):
        return isinstance(v, int) and lo <= v <= hi
    return isinstance(v, (int, float)) and math.isfinite(v) and (lo < v if lo == 0 else lo <= v) and v <= hi


def _relations(cfg: dict, component: str):
    if component == "VLM":
        t, v = _vlm_text(cfg), cfg["vision_config"]
        if t["hidden_size"] % t["num_attention_heads"]:
            yield f"hidden_size {t['hidden_size']} is not divisible by num_attention_heads {t['num_attention_heads']}"
        if t.get("num_key_value_heads") and t["num_attention_heads"] % t["num_key_value_heads"]:
            yield (f"num_attention_heads {t['num_attention_heads']} is not a multiple of num_key_value_heads "
                   f"{t['num_key_value_heads']}")
        if v["hidden_size"] % v["num_heads"]:
            yield f"vision_config.hidden_size {v['hidden_size']} is not divisible by num_heads {v['num_heads']}"
        if v.get("out_hidden_size") not in (None, t["hidden_size"]):
            yield f"vision_config.out_hidden_size {v['out_hidden_size']} differs from hidden_size {t['hidden_size']}"
    elif component == "SCB":
        h, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
        if h and heads and h % heads:
            yield f"hidden_size {h} is not divisible by num_attention_heads {heads}"
    elif component == "DiT":
        bad = [i for i in cfg.get("dual_attention_layers") or [] if i >= cfg["num_layers"]]
        if bad:
            yield f"dual_attention_layers {bad} are beyond num_layers {cfg['num_layers']}"
    elif component == "VAE":
        groups = cfg.get("norm_num_groups") or 32
        if any(c % groups for c in cfg["block_out_channels"]):
            yield f"block_out_channels {cfg['block_out_channels']} are not all divisible by norm_num_groups {groups}"
        if not 1 <= len(cfg["block_out_channels"]) <= 8:
            yield f"block_out_channels has {len(cfg['block_out_channels'])} entries (1..8)"


# ------------------------------------------------------------------ tensors against the config

def _shapes(tensors) -> dict[str, tuple]:
    """name -> shape from a safetensors header (or several merged), a state dict, or name -> shape."""
    out = {}
    for name, v in tensors.items():
        if name == "__metadata__":
            continue
        shape = v.get("shape") if isinstance(v, dict) else getattr(v, "shape", v)
        out[name] = tuple(shape)
    return out


def _indices(shapes, pattern: str, exclude: str | None = None) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in shapes if (m := rx.search(k)) and not (exclude and exclude in k)}


def _anchor(shapes, suffix: str):
    hits = [k for k in shapes if k == suffix or k.endswith("." + suffix)]
    return (hits[0], shapes[hits[0]]) if len(hits) == 1 else (None, None)


def _expectations(cfg: dict, component: str):
    """(lower bound on the parameters the config implies, [(what, pattern, count)], [(suffix, shape)])."""
    if component == "VLM":
        t, v = _vlm_text(cfg), cfg["vision_config"]
        h, i, vv = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
        hv, iv = v["hidden_size"], v["intermediate_size"]
        low = vv * h + t["num_hidden_layers"] * (2 * h * h + 3 * h * i) + v["depth"] * (4 * hv * hv + 2 * hv * iv)
        counts = [("decoder layers (num_hidden_layers)", r"(?:^|\.)layers\.(\d+)\.", t["num_hidden_layers"], "visual"),
                  ("vision blocks (vision_config.depth)", r"visual\.blocks\.(\d+)\.", v["depth"], None)]
        return low, counts, [("embed_tokens.weight", (vv, h))]
    if component == "DiT":
        inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        low = 12 * inner * inner * cfg["num_layers"]
        anchors = []
        p, cin = cfg.get("patch_size") or 2, cfg.get("in_channels") or 16
        anchors.append(("pos_embed.proj.weight", (inner, cin, p, p)))
        if cfg.get("pos_embed_max_size"):
            anchors.append(("pos_embed.pos_embed", (1, cfg["pos_embed_max_size"] ** 2, inner)))
            low = max(low, cfg["pos_embed_max_size"] ** 2 * inner)  # the position table is built in full
        if cfg.get("joint_attention_dim") and cfg.get("caption_projection_dim"):
            anchors.append(("context_embedder.weight", (cfg["caption_projection_dim"], cfg["joint_attention_dim"])))
        if cfg.get("pooled_projection_dim"):
            anchors.append(("time_text_embed.text_embedder.linear_1.weight", (inner, cfg["pooled_projection_dim"])))
        return low, [("transformer blocks (num_layers)", r"^transformer_blocks\.(\d+)\.", cfg["num_layers"], None)], anchors
    if component == "VAE":
        chans, per = cfg["block_out_channels"], cfg.get("layers_per_block") or 1
        low = 2 * 9 * per * sum(c * c for c in chans)
        anchors = [("encoder.conv_in.weight", (chans[0], cfg.get("in_channels") or 3, 3, 3))]
        return low, [("encoder blocks (block_out_channels)", r"^encoder\.down_blocks\.(\d+)\.", len(chans), None)], anchors
    if component == "SCB":
        h, i, n = cfg.get("hidden_size"), cfg.get("intermediate_size"), cfg.get("num_hidden_layers")
        low = n * (4 * h * h + 2 * h * i) if h and i and n else 0
        counts = [("connector layers (num_hidden_layers)", r"^connector\.layers\.(\d+)\.", n, None)] if n else []
        anchors = []
        if cfg.get("num_queries") and cfg.get("llm_hidden_size"):
            anchors.append(("meta_queries", (cfg["num_queries"], cfg["llm_hidden_size"])))
        if h and cfg.get("llm_hidden_size") and cfg.get("num_stacked_layers"):
            anchors.append(("projector_1.weight", (h, cfg["llm_hidden_size"] * cfg["num_stacked_layers"])))
        return low, counts, anchors
    return 0, [], []


def check_tensors(tensors, cfg: dict, component, path) -> None:
    """The tensors (a safetensors header, several merged, a state dict, or name -> shape) against what the
    (already checked) config implies: the layer counts, a few anchor shapes, and the parameter count, so
    that no config makes a loader build more than the files hold."""
    component = component_name(component)
    shapes = {k: s for k, s in _shapes(tensors).items() if "lora" not in k}
    if not shapes:
        _fail(component, path, "holds no tensors")
    low, counts, anchors = _expectations(cfg, component)
    total = sum(math.prod(s) for s in shapes.values())
    fix = "the config and the weights come from different models, or one of them is damaged: download both again"
    if low > total:
        _fail(component, path, f"its config implies at least {low:,} parameters but the weights hold only {total:,}", fix)
    for what, pattern, want, exclude in counts:
        found = _indices(shapes, pattern, exclude)
        if found and found != set(range(want)):
            have = f"{len(found)} (indices {min(found)}..{max(found)})" if found else "none"
            _fail(component, path, f"the config says {want} {what} but the weights hold {have}", fix)
    for suffix, want in anchors:
        name, shape = _anchor(shapes, suffix)
        if name is not None and tuple(shape) != tuple(want):
            _fail(component, path, f"mis-shaped tensors (1): {name} {tuple(shape)} (expected {tuple(want)} from the "
                                   "config)", fix)


def check_folder(folder, component) -> None:
    """config.json and every *.safetensors of a from_pretrained folder, before from_pretrained sees them."""
    folder = Path(folder)
    component = component_name(component)
    cfg = check_config(read_json(folder / "config.json", component), component, folder / "config.json")
    shapes = {}
    for f in sorted(folder.glob("*.safetensors")):
        header = check_safetensors(f, component)
        if twice := sorted(set(header) & set(shapes) - {"__metadata__"}):
            _fail(component, f, f"tensor {twice[0]!r} is also in another file of {folder}",
                  "remove stray or duplicated weight files from the folder")
        shapes.update(_shapes(header))
    check_tensors(shapes, cfg, component, folder)


def parse_config(text, component, path) -> dict:
    """A config embedded as JSON text (converted files' metadata), parsed and checked."""
    fix = _config_fix(component_name(component), path)
    return check_config(_loads(text, component, path, f"its embedded {component_name(component)} config", fix),
                        component, path)


def check_metadata(meta: dict, component, path) -> dict:
    """The JSON fields a converted deepgen_*.safetensors embeds (config, tokenizer_files, scheduler_config),
    checked as their files would be; returns the component's config."""
    component = component_name(component)
    cfg = parse_config(meta.get("config"), component, path)
    if "scheduler_config" in meta:
        parse_config(meta["scheduler_config"], "scheduler", path)
    if component == "VLM":
        files = _loads(meta.get("tokenizer_files"), "tokenizer", path, "the embedded tokenizer_files",
                       _config_fix(component, path))
        check_tokenizer(files, path)
    return cfg


# ------------------------------------------------------------------ tokenizer

def check_tokenizer(source, where=None) -> None:
    """Tokenizer files that must be JSON objects are: a folder, or {file name: text} as embedded in a
    converted VLM file (`where` names that file)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        for name in TOKENIZER_JSON:
            f = folder / name
            if f.exists() and not isinstance(read_json(f, "tokenizer"), dict):
                _fail("tokenizer", f, "is valid JSON but not an object")
        return
    if not isinstance(source, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in source.items()):
        _fail("tokenizer", where, "its embedded tokenizer_files is not a map of file names to text",
              f"re-create {Path(str(where)).name} with `python -m deepgen_model.convert`")
    for name, text in source.items():
        if Path(name).name != name or name in ("", ".", ".."):
            _fail("tokenizer", where, f"embedded tokenizer file name {name[:60]!r} is not a plain file name",
                  f"re-create {Path(str(where)).name} with `python -m deepgen_model.convert`")
        if name in TOKENIZER_JSON and not isinstance(_loads(text, "tokenizer", where, f"embedded {name}"), dict):
            _fail("tokenizer", where, f"embedded {name} is not a JSON object",
                  f"re-create {Path(str(where)).name} with `python -m deepgen_model.convert`")


# ------------------------------------------------------------------ prompt text

def check_prompt(text: str, name: str) -> None:
    """User text must not contain the placeholders the engine fills with image/video features (their count
    must match the pixels given). Other Qwen special tokens (<|im_end|>, <|vision_start|>...) typed by a
    user are parsed as special tokens, exactly as the official code does."""
    found = [t for t in IMAGE_TOKENS if t in text]
    if found:
        raise DeepGenInputError(
            f"{name} contains {', '.join(found)}: that token stands for image features and is placed by DeepGen "
            f"itself for each reference image; remove it from the {name} (for an edit, connect the picture as "
            "image1..image4 instead).")


# ------------------------------------------------------------------ sampling inputs

def check_cfg(cfg, name: str = "cfg", high: float = 100.0) -> float:
    """A finite guidance scale in 0..high (NaN passes ComfyUI's own min/max comparison)."""
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or not 0 <= cfg <= high:
        raise DeepGenInputError(f"{name} is {cfg!r}: it must be a finite number in 0..{high:g} (the authors use 4.0; "
                                "1 or below runs the positive branch only).")
    return float(cfg)


AUTHORS_CFG = (3.5, 7.5)  # the guidance scales of the authors' scripts (4.0 in nearly all of them)
HIGH_CFG = 10.0


def cfg_warning(cfg: float, name: str = "cfg") -> str | None:
    """The user-facing note for a valid but extreme guidance scale (None when it is ordinary)."""
    if cfg <= HIGH_CFG:
        return None
    return (f"{name} is {cfg:g}, far above the {AUTHORS_CFG[0]:g}-{AUTHORS_CFG[1]:g} the authors use (4.0 by default): "
            "expect harsh, oversaturated, burnt-looking pictures; try 4")


def check_steps(steps, high: int, name: str = "steps") -> int:
    """A whole number of sampling steps in 1..high."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= high:
        raise DeepGenInputError(f"{name} is {steps!r}: it must be a whole number in 1..{high} (the authors use 50).")
    return steps
