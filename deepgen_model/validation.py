"""Refusing damaged weight files and absurd configs before anything is allocated (what a user types is
checked by deepgen_model/inputs.py).

Every check here reads only headers and small JSON files (never tensor data) and raises a
DeepGenLoadError that names the file, the component (VLM / SCB / DiT / VAE / tokenizer / scheduler),
what is wrong in plain words and the fix. The loaders call it where they open files and parse configs:

  check_safetensors(path, component) -> header   the safetensors header, checked against the file size
  check_weight_files(folder, component) -> files every file a folder should hold is there and intact
                                                 (config.json, the shards its index lists); all the missing
                                                 and damaged ones named at once, each with where to get it
  check_folder(folder, component) -> (headers, cfg)  the above, then its config against the tensors
                                                 (deepgen_model/config_checks.py: check_config, check_tensors)
  check_metadata(meta, component, path) -> cfg   the JSON fields embedded in a converted file
  parse_config(text, component, path) -> cfg     one embedded JSON config
  read_json(path, component)                     a small JSON file, errors named
  check_tokenizer(folder_or_files, source)       tokenizer files that must be JSON are JSON objects
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from . import download
from .config_checks import WHAT, check_config, check_tensors, config_fix, redownload_fix, refuse, tensor_shapes
from .constants import IMAGE_PAD_TOKEN
from .errors import DeepGenLoadError
from .kinds import component_name

MAX_HEADER = 100_000_000  # bytes; the safetensors format's own limit on the JSON header
MAX_JSON = 64 * 1024 * 1024  # bytes; configs are KBs, Qwen's tokenizer.json ~7 MB
# bits per element of every safetensors dtype
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
              "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
              "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
# what weight files hold (bf16 and fp32 files, fp16 conversions; docs/inference.md#checkpoints)
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")
MAX_DIM = (1 << 63) - 1  # the largest dimension PyTorch can index (int64)
# placeholders the engine fills with image/video features: typed by a user, they break the accounting
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "special_tokens_map.json",
                  "added_tokens.json", "chat_template.json")

_WEIGHTS = ("VLM", "SCB", "DiT", "VAE")  # components whose files hold only weights


# ------------------------------------------------------------------ JSON files

def _loads(text, component, where, what: str, fix: str | None = None):
    if not isinstance(text, str):
        refuse(component, where, f"{what} is missing", fix)
    try:
        return json.loads(text)
    except RecursionError:
        refuse(component, where, f"{what} nests too deeply to be a real one", fix)
    except ValueError as e:
        refuse(component, where, f"{what} is not valid JSON ({e})", fix)


def _refuse_folder(path: Path, component, expected: str) -> None:
    if path.is_dir():
        refuse(component, path, f"is a folder where {expected} should be",
               f"remove the folder and {redownload_fix(path)}")


def read_json(path, component) -> object:
    """Parsed JSON of a small file; missing, a folder, too big, not UTF-8 or not JSON -> DeepGenLoadError."""
    path = Path(path)
    _refuse_folder(path, component, "a JSON file")
    try:
        size = path.stat().st_size
        if size > MAX_JSON:
            refuse(component, path, f"is {size} bytes, far larger than any config or tokenizer file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        refuse(component, path, f"is not UTF-8 text ({e.reason} at byte {e.start})")
    except OSError as e:
        refuse(component, path, f"could not be read ({e.strerror or e})", f"check that {path.name} exists and is readable")
    if not text.strip():
        refuse(component, path, f"is empty ({size} bytes)")
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
                refuse(component, path, "is empty (0 bytes)" if size == 0 else
                       f"is only {size} bytes, too short to be a safetensors file (the header alone needs 8)")
            n = int.from_bytes(prefix, "little")
            if n > size - 8:
                refuse(component, path, f"its header claims {n} bytes but the whole file is {size} bytes "
                                       "(truncated, or not a safetensors file)")
            if n > MAX_HEADER:
                refuse(component, path, f"its header claims {n} bytes, more than the safetensors limit of "
                                       f"{MAX_HEADER} (not a safetensors file)")
            raw = fh.read(n)
    except OSError as e:
        refuse(component, path, f"could not be read ({e.strerror or e})", f"check that {path.name} exists and is readable")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        refuse(component, path, "its header is not UTF-8 text (not a safetensors file)")
    if not text.lstrip().startswith("{"):
        refuse(component, path, "its header is not a JSON object (not a safetensors file)")
    header = _loads(text, component, path, "its header")
    if not isinstance(header, dict):
        refuse(component, path, "its header is not a JSON object (not a safetensors file)")
    _check_entries(header, size - 8 - n, component, path)
    return header


def _check_entries(header: dict, data_size: int, component, path) -> None:
    ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)
            and _ints(e.get("data_offsets")) and len(e["data_offsets"]) == 2]
    if ends and max(ends) > data_size:  # the commonest damage, said plainly before any entry is looked at
        refuse(component, path, f"is truncated: it holds {data_size:,} bytes of tensor data but its header describes "
                               f"{max(ends):,} (an interrupted download or copy)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        refuse(component, path, "its __metadata__ is not a map of strings")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            refuse(component, path, f"tensor {name!r} is described by a {type(entry).__name__}, not "
                                   "{dtype, shape, data_offsets}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype is None:
            refuse(component, path, f"tensor {name!r} has no dtype")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            refuse(component, path, f"tensor {name!r} has an unknown dtype {str(dtype)[:40]!r}")
        if not _ints(shape):
            refuse(component, path, f"tensor {name!r} has shape {str(shape)[:80]}, not a list of non-negative integers")
        if any(d > MAX_DIM for d in shape):
            refuse(component, path, f"tensor {name!r} has shape {str(shape)[:80]}: a dimension beyond 2^63 - 1, more "
                                   "than any tensor can have")
        if component_name(component) in _WEIGHTS and dtype not in WEIGHT_DTYPES:
            refuse(component, path, f"tensor {name!r} is declared {dtype}, but {WHAT[component_name(component)]} "
                                   f"holds floating-point weights ({', '.join(WEIGHT_DTYPES)}): the header mislabels "
                                   "the data, or the file holds something else")
        if not (_ints(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1] <= data_size):
            refuse(component, path, f"tensor {name!r} has data_offsets {str(offsets)[:80]} outside the file's "
                                   f"{data_size} data bytes (truncated or corrupted)")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits != 8 * (offsets[1] - offsets[0]):
            refuse(component, path, f"tensor {name!r} ({dtype} {list(shape)}) needs {bits / 8:.0f} bytes but its "
                                   f"data_offsets span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            refuse(component, path, f"tensor {name!r} starts at byte {begin} of the data, expected {end} "
                                   "(overlapping or missing data)")
        end = stop
    if end != data_size:
        refuse(component, path, f"its tensors describe {end} data bytes but the file holds {data_size} "
                               f"({'truncated' if end > data_size else 'trailing bytes'})")


def _ints(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


# ------------------------------------------------------------------ the files of a folder

_SHARD = re.compile(r"^(.+)-(\d+)-of-(\d+)\.safetensors$")
_DEFAULT_WEIGHTS = {"DiT": "diffusion_pytorch_model.safetensors", "VAE": "diffusion_pytorch_model.safetensors"}


def check_weight_files(folder, component) -> dict[Path, dict]:
    """The checked safetensors headers of a from_pretrained folder's *.safetensors, once every file it should
    hold is there and intact: config.json; each shard its index (*.safetensors.index.json) lists, or a
    shard's "-of-N" name implies; each header against its file's size; the tensors the index assigns to each
    shard. Every missing or damaged file is named at once, each with where to get it again: a partial
    download costs one file, never the whole folder."""
    folder = Path(folder)
    component = component_name(component)
    bad: list[tuple[Path, str]] = []
    if not (folder / "config.json").is_file():
        bad.append((folder / "config.json", "missing"))
    present = sorted(folder.glob("*.safetensors"))
    wanted: dict[str, str] = {}  # file name -> why it should be there
    assigned: dict[str, set] = {}  # shard -> the tensors the index puts in it
    for index in sorted(folder.glob("*.safetensors.index.json")):
        for tensor, shard in _weight_map(index, component).items():
            wanted.setdefault(shard, f"listed in {index.name}")
            assigned.setdefault(shard, set()).add(tensor)
    for f in present:
        if m := _SHARD.match(f.name):
            for i in range(1, int(m[3]) + 1):
                wanted.setdefault(f"{m[1]}-{i:0{len(m[2])}d}-of-{m[3]}.safetensors", f"shard {i} of {int(m[3])}")
    if not present and not wanted:  # nothing on disk says which: the release's names, else the usual one
        for name in download.table_weights(folder) or [_DEFAULT_WEIGHTS.get(component, "model.safetensors")]:
            wanted[name] = "the weights"
    bad += [(folder / name, f"missing ({why})") for name, why in wanted.items() if not (folder / name).exists()]
    headers, messages = {}, {}
    for f in present:
        try:
            headers[f] = check_safetensors(f, component)
        except DeepGenLoadError as e:
            bad.append((f, getattr(e, "problem", str(e))))
            messages[f] = str(e)
    for shard, tensors in assigned.items():
        if folder / shard in headers and (lost := sorted(tensors - set(headers[folder / shard]))):
            bad.append((folder / shard, f"lacks {len(lost)} of the {len(tensors)} tensors the index puts in it "
                                        f"(e.g. {lost[0]}): a different or damaged file"))
    if bad:
        fine = [f for f in present if f not in {path for path, _ in bad}]
        raise DeepGenLoadError(_files_report(component, folder, bad, fine, messages))
    return headers


def _weight_map(index: Path, component) -> dict:
    """The weight_map of a shard index: tensor name -> a plain file name in the index's folder."""
    weight_map = read_json(index, component)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.endswith(".safetensors") and Path(v).name == v
            for k, v in weight_map.items()):
        refuse(component, index, "its weight_map is not a map of tensor names to .safetensors file names")
    return weight_map


def _files_report(component, folder: Path, bad: list[tuple[Path, str]], fine: list[Path], messages: dict) -> str:
    """Each missing or damaged file with its URL and the command that fetches just it (one damaged file: its
    own message, which says so)."""
    def hint(path):
        return download.fetch_hint(path) or "download it again from where the rest of the folder came from"

    if len(bad) == 1:
        (path, problem), = bad
        text = messages.get(path) or (
            f"{component_name(component)} folder {folder}: {path.name} is {problem}; {hint(path)}."
            if problem.startswith("missing") else f"{component_name(component)} file {path}: {problem}; {redownload_fix(path)}.")
    else:
        text = "\n".join([f"{component_name(component)} folder {folder}: {len(bad)} files are missing or damaged. "
                          "Fetch just these:"] + [f"  {path.name}: {problem}\n    {hint(path)}" for path, problem in bad])
    if fine:
        text += (f"\nThe folder's other weight files ({', '.join(f.name for f in fine)}) look complete (header and size "
                 "checked): no need to download them again.")
    return text


def check_folder(folder, component) -> tuple[dict[Path, dict], dict]:
    """Every file of a model folder (check_weight_files), then its config, and the config against the tensors'
    shapes, before any tensor is read. Returns (the checked headers of its weight files, the checked config)."""
    folder = Path(folder)
    component = component_name(component)
    headers = check_weight_files(folder, component)
    cfg = check_config(read_json(folder / "config.json", component), component, folder / "config.json")
    shapes = {}
    for f, header in headers.items():
        if twice := sorted(set(header) & set(shapes) - {"__metadata__"}):
            refuse(component, f, f"tensor {twice[0]!r} is also in another file of {folder}",
                   "remove stray or duplicated weight files from the folder")
        shapes.update(tensor_shapes(header))
    check_tensors(shapes, cfg, component, folder)
    return headers, cfg


def parse_config(text, component, path) -> dict:
    """A config embedded as JSON text (converted files' metadata), parsed and checked."""
    fix = config_fix(component_name(component), path)
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
                       config_fix(component, path))
        check_tokenizer(files, path)
    return cfg


# ------------------------------------------------------------------ tokenizer

# config field -> the special token whose id it must be (docs/inference.md#vlm): image tokens are found by these ids
TOKEN_FIELDS = {"image_token_id": IMAGE_PAD_TOKEN, "video_token_id": "<|video_pad|>",
                "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
                "vision_token_id": "<|vision_pad|>"}


def check_token_ids(config, tokenizer, path) -> None:
    """The VLM config's special-token ids (a dict or a transformers config) are the tokenizer's ids of those
    tokens: an image_token_id that points elsewhere would silently leave the reference image out."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    for field, token in TOKEN_FIELDS.items():
        want, have = tokenizer.convert_tokens_to_ids(token), get(field)
        if have is not None and want is not None and want != getattr(tokenizer, "unk_token_id", None) and have != want:
            refuse("VLM", path, f"{field} is {have}, but the tokenizer's id of {token} is {want}",
                   "the VLM config and the tokenizer come from different models: download both again from the "
                   "same release (or vlm_base)")

def check_tokenizer(source, where=None) -> None:
    """Tokenizer files that must be JSON objects are: a folder, or {file name: text} as embedded in a
    converted VLM file (`where` names that file)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        for name in TOKENIZER_JSON:
            f = folder / name
            if f.exists() and not isinstance(read_json(f, "tokenizer"), dict):
                refuse("tokenizer", f, "is valid JSON but not an object")
        return
    if not isinstance(source, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in source.items()):
        refuse("tokenizer", where, "its embedded tokenizer_files is not a map of file names to text",
               f"re-create {Path(str(where)).name} with `python -m deepgen_model.convert`")
    for name, text in source.items():
        if Path(name).name != name or name in ("", ".", ".."):
            refuse("tokenizer", where, f"embedded tokenizer file name {name[:60]!r} is not a plain file name",
                   f"re-create {Path(str(where)).name} with `python -m deepgen_model.convert`")
        if name in TOKENIZER_JSON and not isinstance(_loads(text, "tokenizer", where, f"embedded {name}"), dict):
            refuse("tokenizer", where, f"embedded {name} is not a JSON object",
                   f"re-create {Path(str(where)).name} with `python -m deepgen_model.convert`")
