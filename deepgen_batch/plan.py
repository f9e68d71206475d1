"""What to do: the items of a batch from a folder (+ one instruction) or a CSV/JSONL mapping file.

Per item: the source file, the instruction, a 64-bit seed (the mapping's, else base + index), optional
size (width / height / max_side) and negative prompt, and where its result goes in the output folder.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from pathlib import Path, PurePosixPath

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SEED_MOD = 1 << 64
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
    output_stem: str      # relative to the output folder, without extension
    width: int | None = None
    height: int | None = None
    max_side: int | None = None
    negative: str | None = None


def scan_folder(root: Path, recursive: bool = False) -> list[str]:
    if not root.is_dir():
        raise PlanError(f"input folder {root} does not exist")
    files = root.rglob("*") if recursive else root.iterdir()
    return sorted(p.relative_to(root).as_posix() for p in files
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


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


def _output_stems(inputs: list[str]) -> list[str]:
    """<stem> per input; inputs sharing a stem (a.jpg, a.png) keep their extension (a_jpg), and the
    k-th repeat of one input (several instructions for one image) gets _k."""
    stems = [str(PurePosixPath(i).with_suffix("")) for i in inputs]
    owners = Counter(stem for stem, _ in set(zip(stems, inputs)))  # distinct inputs per stem
    out, seen = [], Counter()
    for stem, inp in zip(stems, inputs):
        if owners[stem] > 1:
            stem = f"{stem}_{PurePosixPath(inp).suffix.lstrip('.').lower()}"
        seen[inp] += 1
        out.append(stem if seen[inp] == 1 else f"{stem}_{seen[inp]}")
    return out


def build_plan(input_dir: Path, rows: list[dict] | None, *, instruction: str | None, seed_base: int = 0,
               recursive: bool = False, width: int | None = None, height: int | None = None,
               max_side: int | None = None, negative: str | None = None) -> list[Item]:
    if rows is None:
        if not instruction:
            raise PlanError("give --instruction (one edit for every image) or --mapping FILE")
        rows = [{"filename": f} for f in scan_folder(input_dir, recursive)]
        if not rows:
            raise PlanError(f"no images ({', '.join(IMAGE_EXTS)}) in {input_dir}")
    inputs = []
    for row in rows:
        rel = PurePosixPath(row["filename"].replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts:
            raise PlanError(f"mapping file name {row['filename']!r} must be relative to the input folder")
        inputs.append(rel.as_posix())
    items = []
    for i, (row, rel, stem) in enumerate(zip(rows, inputs, _output_stems(inputs))):
        text = row.get("instruction") or instruction
        if not text:
            raise PlanError(f"{rel}: no instruction in the mapping file and no --instruction fallback")
        seed = row.get("seed")
        items.append(Item(
            index=i, input=rel, source=input_dir / rel, instruction=text,
            seed=seed if seed is not None else (seed_base + i) % SEED_MOD, output_stem=stem,
            width=row.get("width") or width, height=row.get("height") or height,
            max_side=row.get("max_side") or max_side, negative=row.get("negative") or negative))
    return items
