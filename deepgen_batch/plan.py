"""What to do: the items of a batch from a folder (+ one instruction) or a CSV/JSONL mapping file.

Per item: the source file, the instruction, a 64-bit seed (the mapping's, else the one the manifest records
for the item, else ``derive_seed`` of --seed and the item's name), optional size (width / height / max_side)
and negative prompt, and its result's file name in the output folder (``output_names``: decided here, before
any job is sent, and never shared by two items).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import unicodedata
from collections import Counter
from pathlib import Path, PurePosixPath

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SEED_MOD = 1 << 64
# bytes of a result's file name: NAME_MAX (255) less the temp name's additions (".<name>.<8 random>.deepgen-part")
# and room for the "_2_<hash>" of a workflow's extra images
MAX_NAME_BYTES = 200
_ALIASES = {"filename": ("filename", "file", "image", "input", "path"),
            "instruction": ("instruction", "prompt", "edit", "text"),
            "seed": ("seed",), "width": ("width",), "height": ("height",), "max_side": ("max_side", "max-side"),
            "negative": ("negative", "negative_prompt")}
_MULTIPLE = {"width": 16, "height": 16, "max_side": 32}  # the DeepGenEditEncode rules


class PlanError(ValueError):
    pass


@dataclasses.dataclass
class Item:
    index: int
    input: str            # path relative to the input folder (POSIX): the manifest key
    source: Path
    instruction: str
    seed: int
    output: str           # result file, relative to the output folder (POSIX), e.g. "sub/cat.png"
    seed_base: int | None = None  # the --seed the seed was derived under (None: the mapping gave it)
    width: int | None = None
    height: int | None = None
    max_side: int | None = None
    negative: str | None = None


def scan_folder(root: Path, recursive: bool = False, exclude: Path | None = None) -> list[str]:
    """Image files in root (sorted); ``exclude`` (the output folder, when it lies inside root) is skipped,
    so results are never taken as inputs."""
    if not root.is_dir():
        raise PlanError(f"input folder {root} does not exist")
    files = root.rglob("*") if recursive else root.iterdir()
    skip = exclude.resolve() if exclude is not None else None
    return sorted(p.relative_to(root).as_posix() for p in files
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
                  and not (skip is not None and skip in p.resolve().parents))


def _int(value, field: str, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        n = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value).strip(), 0)
    except ValueError:
        raise PlanError(f"{where}: {field} {value!r} is not an integer") from None
    if field == "seed" and not 0 <= n < SEED_MOD:
        raise PlanError(f"{where}: seed {n} is outside 0 .. 2**64-1")
    if field in _MULTIPLE and (n <= 0 or n % _MULTIPLE[field]):
        raise PlanError(f"{where}: {field} {n} must be a positive multiple of {_MULTIPLE[field]}")
    return n


def _normalise_row(raw: dict, where: str) -> dict:
    lower = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
    row = {}
    for field, names in _ALIASES.items():
        row[field] = next((lower[n] for n in names if n in lower and lower[n] not in (None, "")), None)
    if not row["filename"]:
        raise PlanError(f"{where}: no file name (column/key 'filename')")
    for field in ("seed", "width", "height", "max_side"):
        row[field] = _int(row[field], field, where)
    for field in ("filename", "instruction", "negative"):
        if row[field] is not None:
            row[field] = str(row[field])
    return row


def read_mapping(path: Path) -> list[dict]:
    """CSV/TSV (header row) or JSONL (one object per line) -> normalised rows."""
    if not path.is_file():
        raise PlanError(f"mapping file {path} does not exist")
    suffix = path.suffix.lower()
    rows = []
    if suffix in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise PlanError(f"{path}:{n}: not a JSON object ({e})") from None
            if not isinstance(obj, dict):
                raise PlanError(f"{path}:{n}: expected a JSON object per line")
            rows.append(_normalise_row(obj, f"{path}:{n}"))
    elif suffix in (".csv", ".tsv", ".txt"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames or not {h.strip().lower() for h in reader.fieldnames} & set(_ALIASES["filename"]):
                raise PlanError(f"{path}: the first row must be a header with a 'filename' column "
                                "(and 'instruction', optional 'seed', 'width', 'height', 'max_side', 'negative')")
            for raw in reader:
                if any((v or "").strip() for v in raw.values() if isinstance(v, str)):
                    rows.append(_normalise_row(raw, f"{path}:{reader.line_num}"))
    else:
        raise PlanError(f"mapping file {path}: use .csv, .tsv or .jsonl")
    if not rows:
        raise PlanError(f"mapping file {path} lists no images")
    return rows


def fold(name: str) -> str:
    """The form under which two file names are the same file on some file system (case-insensitive
    macOS/Windows, NFD vs NFC): every uniqueness check compares this."""
    return unicodedata.normalize("NFC", name).casefold()


def _png(stem: str, tag: str | None = None, long_tag: str | None = None) -> str:
    """stem[_tag].png, within MAX_NAME_BYTES of UTF-8: a stem too long is cut at a character boundary and then
    always carries a tag (``long_tag`` when the name had none), so long names that begin alike stay apart."""
    name = stem + (f"_{tag}" if tag else "") + ".png"
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    tag = tag or long_tag
    room = MAX_NAME_BYTES - len(f"_{tag}.png")
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + f"_{tag}.png"


def _forms(inp: str, k: int) -> list[str]:
    """The names entry (inp, k-th occurrence) may take, in order of preference (see output_names)."""
    p = PurePosixPath(inp)
    folder = "" if str(p.parent) == "." else p.parent.as_posix() + "/"
    ext = p.suffix.lstrip(".")
    rep = f"_{k}" if k > 1 else ""
    kept = f"{p.stem}_{ext}{rep}" if ext else f"{p.stem}{rep}"
    tag = hashlib.sha256(f"{inp}#{k}".encode()).hexdigest()
    return [folder + name for name in (_png(f"{p.stem}{rep}", long_tag=tag[:8]), _png(kept, long_tag=tag[:8]),
                                       *(_png(kept, tag[:n]) for n in (8, 16, 64)))]


def derive_seed(base: int, inp: str, k: int = 1) -> int:
    """The seed of the k-th entry of input ``inp`` under --seed ``base``: the first 8 bytes of
    SHA-256("<base>:<inp>#<k>"). It depends on nothing but the item itself, so adding, removing or
    renaming other files never changes it."""
    return int.from_bytes(hashlib.sha256(f"{base}:{inp}#{k}".encode()).digest()[:8], "big")


def output_names(inputs: list[str], owned: dict[str, str] | None = None) -> list[str]:
    """The result file per plan entry (relative to the output folder): injective, also on case-insensitive
    file systems, and the same on every run with the same inputs.

    Entry ``dir/stem.ext`` (its k-th occurrence: one image with several instructions) takes the first of
        dir/stem.png   ->   dir/stem_ext.png   ->   dir/stem_ext_<8 hex of sha256(path#k)>.png
    (``_k`` before the ``.png`` for k > 1) that no other entry proposes at the same step, no earlier step
    took, no other input owns in the manifest (``owned``: folded name -> input) and no result needs as a
    folder. So a.png / a.jpg give a_png.png / a_jpg.png, and foo.png / foo.PNG two hashed names. A name
    the manifest already gives to this input is kept, so results of earlier runs keep their names when
    new inputs arrive. A name longer than MAX_NAME_BYTES is cut and tagged with the hash (``_png``).
    """
    owned = owned or {}
    seen, entries = Counter(), []
    for inp in inputs:
        seen[inp] += 1
        entries.append((inp, seen[inp]))
    forms = [_forms(inp, k) for inp, k in entries]
    folders = {fold(str(parent)) for f in forms for parent in PurePosixPath(f[0]).parents if str(parent) != "."}
    names: list[str | None] = [None] * len(entries)
    taken = set()
    for i, (inp, _k) in enumerate(entries):  # names this input had in earlier runs stay its own
        mine = next((f for f in forms[i] if owned.get(fold(f)) == inp and fold(f) not in taken), None)
        if mine is not None:
            names[i] = mine
            taken.add(fold(mine))
    for step in range(len(forms[0]) if forms else 0):
        left = [i for i, n in enumerate(names) if n is None]
        wanted = Counter(fold(forms[i][step]) for i in left)
        for i in left:
            key = fold(forms[i][step])
            if (wanted[key] == 1 and key not in taken and key not in folders
                    and owned.get(key, entries[i][0]) == entries[i][0]):
                names[i] = forms[i][step]
        taken |= {fold(names[i]) for i in left if names[i] is not None}
    if None in names or len(taken) != len(names):  # sha256 prefixes of distinct paths: cannot happen
        raise PlanError("could not give every item its own output name: " + ", ".join(
            inp for (inp, _), n in zip(entries, names) if n is None))
    return names


def _mapping_name(input_dir: Path, name: str) -> str:
    """A mapping row's file name as a POSIX path: "\\" is a folder separator (a path typed on Windows) unless
    a file of that exact name exists (on Linux and macOS "\\" is an ordinary character in a file name)."""
    if "\\" in name and not (os.sep == "/" and (input_dir / name).exists()):
        name = name.replace("\\", "/")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise PlanError(f"mapping file name {name!r} must be relative to the input folder")
    return rel.as_posix()


def build_plan(input_dir: Path, rows: list[dict] | None, *, instruction: str | None, seed_base: int = 0,
               recursive: bool = False, width: int | None = None, height: int | None = None,
               max_side: int | None = None, negative: str | None = None, exclude: Path | None = None,
               owned: dict[str, str] | None = None, seeds: dict[tuple[str, str], int] | None = None) -> list[Item]:
    """``exclude``: a folder left out of the scan (the output folder); ``owned``: output_names';
    ``seeds``: (input, output) -> the seed the manifest records for that item under this --seed, kept.

    An item's seed: the mapping row's; else the one ``seeds`` keeps; else derive_seed(seed_base, input, k)."""
    if rows is None:
        if not instruction:
            raise PlanError("give --instruction (one edit for every image) or --mapping FILE")
        inputs = scan_folder(input_dir, recursive, exclude)  # real names: a "\\" in one is part of it
        if not inputs:
            raise PlanError(f"no images ({', '.join(IMAGE_EXTS)}) in {input_dir}")
        rows = [{"filename": f} for f in inputs]
    else:
        inputs = [_mapping_name(input_dir, row["filename"]) for row in rows]
    seeds = seeds or {}
    seen = Counter()
    items = []
    for i, (row, rel, name) in enumerate(zip(rows, inputs, output_names(inputs, owned))):
        text = row.get("instruction") or instruction
        if not text:
            raise PlanError(f"{rel}: no instruction in the mapping file and no --instruction fallback")
        seen[rel] += 1
        seed, base = row.get("seed"), None
        if seed is None:
            base = seed_base % SEED_MOD
            seed = seeds.get((rel, name), derive_seed(base, rel, seen[rel]))
        items.append(Item(
            index=i, input=rel, source=input_dir / rel, instruction=text, seed=seed, seed_base=base, output=name,
            width=row.get("width") or width, height=row.get("height") or height,
            max_side=row.get("max_side") or max_side, negative=row.get("negative") or negative))
    return items
