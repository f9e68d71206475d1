"""Download (or check) the DeepGen 1.0 weights into <ComfyUI>/models/deepgen.

    python -m deepgen_model.download --to <ComfyUI>/models/deepgen [--layout diffusers|native]
                                     [--include PART ...] [--dry-run] [--check] [--verify-sha256]
    python -m deepgen_model.download --file <ComfyUI>/models/deepgen/DeepGen-1.0-diffusers/vlm/model-00002-of-00002.safetensors

Layouts (docs/inference.md#checkpoints) and where they go under --to (the folder names the nodes and example workflows use):
  diffusers  deepgenteam/DeepGen-1.0-diffusers            -> DeepGen-1.0-diffusers/        (~14.3 GB)
  native     deepgenteam/DeepGen-1.0 model.pt             -> DeepGen-1.0/model.pt          (~16.4 GB)
             + Qwen/Qwen2.5-VL-3B-Instruct                -> Qwen2.5-VL-3B-Instruct/       (~7.5 GB)
             + Skywork/UniPic2-SD3.5M-Kontext-2B (DiT config, VAE, scheduler only)
                                                          -> UniPic2-SD3.5M-Kontext-2B/
The file table (FILES) is data: --dry-run and --check work offline and never import huggingface_hub.
Downloading lists each repository once (exact sizes and LFS SHA-256), skips files already complete
and lets huggingface_hub resume partial ones (kept under <folder>/.cache/huggingface/download).
--file fetches single files, named by where they go (as --check and the loaders' errors print them).

Exit status: 0 done (or all present); 1 files still missing or incomplete; 2 bad arguments (an unknown
file, a destination whose parent folder does not exist); 4 the download failed (hub unreachable, a file
that arrived damaged): nothing else was tried, and running the same command again resumes.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

GB = 1e9
EXIT_INCOMPLETE, EXIT_USAGE, EXIT_DOWNLOAD_FAILED = 1, 2, 4
PACK_ROOT = Path(__file__).absolute().parents[1]


@dataclass(frozen=True)
class Part:
    name: str
    repo: str
    folder: str  # destination folder under --to
    patterns: tuple[str, ...]  # repository files fetched (required ones + small optional extras)
    description: str


@dataclass(frozen=True)
class FileSpec:
    part: str
    path: str  # path inside the repository == path inside the destination folder
    approx_bytes: int | None = None  # from docs/inference.md#sizes (exact size comes from the hub listing)
    sha256: str | None = None  # known in advance (the hub's LFS object id)
    required: bool = True
    note: str = ""


PARTS = {p.name: p for p in (
    Part("release", "deepgenteam/DeepGen-1.0-diffusers", "DeepGen-1.0-diffusers",
         ("model_index.json", "prompt_template.json", "transformer/*", "connector/*", "vlm/*", "vae/*",
          "scheduler/*", "tokenizer/*"),
         "the diffusers release: DiT, SCB connector, LoRA-merged VLM, VAE, scheduler, tokenizer"),
    Part("model.pt", "deepgenteam/DeepGen-1.0", "DeepGen-1.0", ("model.pt", "config.json"),
         "the native checkpoint: DiT + SCB connector (+ VLM LoRA)"),
    Part("qwen", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-3B-Instruct",
         ("*.json", "*.safetensors", "merges.txt", "*.jinja"),
         "the VLM base for model.pt (its LoRA is merged into it at load)"),
    Part("unipic2", "Skywork/UniPic2-SD3.5M-Kontext-2B", "UniPic2-SD3.5M-Kontext-2B",
         ("transformer/config.json", "vae/*", "scheduler/*"),
         "DiT config, VAE and scheduler for model.pt (its DiT weights are not needed: model.pt has them)"),
)}

LAYOUTS = {"diffusers": ("release",), "native": ("model.pt", "qwen", "unipic2")}

_TOKENIZER = ("tokenizer_config.json", "vocab.json", "merges.txt")
FILES: tuple[FileSpec, ...] = (
    # deepgenteam/DeepGen-1.0-diffusers (docs/inference.md#diffusers-layout)
    FileSpec("release", "model_index.json"),
    FileSpec("release", "transformer/config.json"),
    FileSpec("release", "transformer/diffusion_pytorch_model.safetensors", 4_939_433_672,
             "54078ee51ab477275e94b610249ea912d6f80d24256c4197fe48945eef706883", note="DiT, bf16, 909 tensors"),
    FileSpec("release", "connector/model.safetensors", 1_729_798_128,
             "425ce59f596eeb573f9cd52138b775df47ce69c60d2782fb32cac5498ed208f3",
             note="SCB connector + projectors + think tokens, fp32, 103 tensors"),
    FileSpec("release", "connector/config.json", required=False),
    FileSpec("release", "vlm/config.json"),
    FileSpec("release", "vlm/model.safetensors.index.json"),
    FileSpec("release", "vlm/model-00001-of-00002.safetensors", 4_997_681_152,
             "d6f11cc9c30184ce92605f25ac1e6b6644ee217e7b86a28282b3c9b17de3e609", note="Qwen2.5-VL-3B, LoRA merged, bf16"),
    FileSpec("release", "vlm/model-00002-of-00002.safetensors", 2_511_564_800,
             "c675c19a231b0ead141d8d3a05fe930892ddf17f1324d75bb94d2a42a79f7ebc"),
    FileSpec("release", "vae/config.json"),
    FileSpec("release", "vae/diffusion_pytorch_model.safetensors", 167_639_366,
             "5a170129752b4ad4ab98996d2e59097c8c693afc31a5964bd2ad60896686c1e2", note="SD3 VAE, 244 tensors"),
    FileSpec("release", "scheduler/scheduler_config.json"),
    *(FileSpec("release", f"tokenizer/{f}") for f in _TOKENIZER),
    # deepgenteam/DeepGen-1.0 (docs/inference.md#native-layout)
    FileSpec("model.pt", "model.pt", 16_400_000_000,
             "9d2a4cc7b12a69bc3d481ba331b4ceec2dfd12f39de9d0985fad6431ef14d578", note="pickle; loaded weights_only"),
    FileSpec("model.pt", "config.json", required=False),
    # Qwen/Qwen2.5-VL-3B-Instruct (stock; docs/inference.md#vlm)
    FileSpec("qwen", "config.json"),
    FileSpec("qwen", "model.safetensors.index.json"),
    FileSpec("qwen", "model-00001-of-00002.safetensors", 3_980_000_000),
    FileSpec("qwen", "model-00002-of-00002.safetensors", 3_530_000_000),
    *(FileSpec("qwen", f) for f in _TOKENIZER),
    FileSpec("qwen", "tokenizer.json"),
    # Skywork/UniPic2-SD3.5M-Kontext-2B (docs/inference.md#native-layout): no transformer weights (model.pt overrides them)
    FileSpec("unipic2", "transformer/config.json"),
    FileSpec("unipic2", "vae/config.json"),
    FileSpec("unipic2", "vae/diffusion_pytorch_model.safetensors"),
    FileSpec("unipic2", "scheduler/scheduler_config.json"),
)


@dataclass(frozen=True)
class Planned:
    spec: FileSpec
    root: Path  # the part's destination folder
    size: int | None = None  # exact size, when the hub listing gave it

    @property
    def part(self) -> Part:
        return PARTS[self.spec.part]

    @property
    def dest(self) -> Path:
        return self.root / self.spec.path

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.part.repo}/resolve/main/{self.spec.path}"


# ---------------------------------------------------------------------------------------- planning

def parts_for(layout: str, include=None) -> list[str]:
    names = list(include) if include else list(LAYOUTS[layout])
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    return names


def plan(to, layout: str = "diffusers", include=None, optional: bool = True) -> list[Planned]:
    """The table's files of a layout (or of the included parts), with their destination under `to`."""
    to = Path(to)
    names = parts_for(layout, include)
    return [Planned(f, to / PARTS[f.part].folder) for n in names for f in FILES
            if f.part == n and (optional or f.required)]


def detect(to) -> str:
    """The layout found under `to`: diffusers if its folder exists, else native if model.pt's does."""
    to = Path(to)
    if not (to / PARTS["release"].folder).exists() and (to / PARTS["model.pt"].folder).exists():
        return "native"
    return "diffusers"


def source_of(path) -> Planned | None:
    """The table's file that `path` is a copy of, with `root` the folder it sits in as its part's folder.

    Matched on the trailing folders and name (vlm/model-00002-of-00002.safetensors is the release's; a bare
    model-00002-of-00002.safetensors is Qwen's); among equal matches the part whose folder name the path
    holds wins (UniPic2's vae/ vs the release's), then a required file. None: the table does not know it."""
    path = Path(path).absolute()
    best = None
    for f in FILES:
        parts = tuple(f.path.split("/"))
        if len(path.parts) <= len(parts) or path.parts[-len(parts):] != parts:
            continue
        root = Path(*path.parts[:-len(parts)])
        score = (len(parts), root.name == PARTS[f.part].folder, f.required)
        if best is None or score > best[0]:
            best = (score, Planned(f, root))
    return best[1] if best else None


def table_weights(folder) -> list[str]:
    """Names of the table's required weight files (and shard indexes) that belong directly in `folder`, when
    the table knows the folder: by its name (transformer/, vlm/, vae/, connector/ of a release) or, for the
    repositories whose weights sit at the top (Qwen), by the part's folder name."""
    folder = Path(folder)
    names = []
    for f in FILES:
        head, _, name = f.path.rpartition("/")
        if f.required and name.endswith((".safetensors", ".index.json")) and (
                folder.name == head if head else folder.name == PARTS[f.part].folder) and name not in names:
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------- local state

def sha256_of(path: Path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _intact(path: Path) -> str | None:
    """Why a file is visibly truncated or corrupt (cheap: header/footer only), or None."""
    size = path.stat().st_size
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    return f"truncated safetensors ({size:,} bytes)"
                header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if size != 8 + n + end:
                return f"truncated safetensors ({size:,} of {8 + n + end:,} bytes)"
        elif path.suffix in (".pt", ".pth"):
            with zipfile.ZipFile(path):  # torch.save's format; the central directory sits at the end
                pass
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def state(item: Planned, verify_sha256: bool = False, sha256: str | None = None) -> str | None:
    """None when the file is complete; else why not ("missing", size/sha mismatch, truncated)."""
    p = item.dest
    if not p.is_file():
        return "missing"
    if item.size is not None and p.stat().st_size != item.size:
        return f"size {p.stat().st_size:,} bytes, expected {item.size:,}"
    problem = _intact(p)
    if problem:
        return problem
    want = sha256 or item.spec.sha256
    if verify_sha256 and want:
        got = sha256_of(p)
        if got != want:
            return f"sha256 {got} != expected {want}"
    return None


def size_text(f: FileSpec) -> str:
    if f.approx_bytes:
        return "≈" + human(f.approx_bytes)
    return "small" if f.path.endswith((".json", ".txt", ".jinja")) else "?"


def human(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def download_command(to, layout: str, include=None, python: str = "python") -> str:
    """The shell command that fetches what is missing (run from this pack's folder, hence the cd)."""
    inc = f" --include {' '.join(include)}" if include else ""
    return f"cd {_q(PACK_ROOT)} && {python} -m deepgen_model.download --to {_q(to)} --layout {layout}{inc}"


def file_command(paths, python: str = "python") -> str:
    """The shell command that fetches exactly these files (paths where they go)."""
    return f"cd {_q(PACK_ROOT)} && {python} -m deepgen_model.download --file {' '.join(_q(p) for p in paths)}"


def fetch_hint(path, python: str | None = None) -> str | None:
    """Where to get the file at `path` again, one file only: its URL and the helper's one-file command (run
    by `python`, default this Python: inside ComfyUI, ComfyUI's own)."""
    item = source_of(path)
    if item is None:
        return None
    return f"get it from {item.url} (or run: {file_command([item.dest], python or _q(sys.executable))})"


def _q(p) -> str:
    s = str(p)
    return f"'{s}'" if any(c in s for c in " '\"$&;()") else s


# ---------------------------------------------------------------------------------------- reports

def table_lines(items: list[Planned], with_state: bool = False) -> list[str]:
    lines = []
    for part in dict.fromkeys(i.spec.part for i in items):
        p = PARTS[part]
        lines.append(f"[{part}] {p.repo}  ->  {next(i.root for i in items if i.spec.part == part)}")
        for i in (i for i in items if i.spec.part == part):
            f = i.spec
            size = size_text(f)
            flag = "" if f.required else " (optional)"
            st = ""
            if with_state:
                s = state(i)
                st = "ok       " if s is None else "missing  " if s == "missing" else "BROKEN   "
            lines.append(f"  {st}{f.path:<48} {size:>10}  sha256 {f.sha256 or '-'}{flag}")
    return lines


def markdown_table(layouts=tuple(LAYOUTS)) -> str:
    """The file table as Markdown (docs/weights.md embeds it verbatim; a test keeps them in sync)."""
    rows = ["| layout | repository | file | goes to (under models/deepgen) | size | SHA-256 |",
            "|---|---|---|---|---|---|"]
    for layout in layouts:
        for part in LAYOUTS[layout]:
            p = PARTS[part]
            for f in (f for f in FILES if f.part == part):
                size = size_text(f)
                opt = " (optional)" if not f.required else ""
                rows.append(f"| {layout} | `{p.repo}` | `{f.path}`{opt} | `{p.folder}/{f.path}` | {size} | "
                            f"{'`' + f.sha256 + '`' if f.sha256 else '—'} |")
    return "\n".join(rows)


def check_report(to, layout: str, include=None, verify_sha256: bool = False, python: str = "python"):
    """(ok, lines): every required file of the layout present and intact, and the text to print."""
    to = Path(to)
    items = plan(to, layout, include, optional=False)
    lines = [f"DeepGen weights check: layout {layout!r} in {to}"]
    bad = []
    for i in items:
        problem = state(i, verify_sha256)
        lines.append(f"  {'ok' if problem is None else 'MISSING' if problem == 'missing' else 'BROKEN':<8} "
                     f"{i.part.folder}/{i.spec.path}" + ("" if problem in (None, "missing") else f"  ({problem})"))
        if problem is not None:
            bad.append(i)
    if not bad:
        known = sum(i.spec.sha256 is not None for i in items)
        lines.append(f"All {len(items)} required files are present" +
                     (f"; the {known} with a known SHA-256 match it." if verify_sha256 else "."))
        return True, lines
    total = sum(i.spec.approx_bytes or 0 for i in bad)
    lines += ["", f"{len(bad)} of {len(items)} required files are missing or incomplete"
                  f"{f' (≈{human(total)})' if total else ''}. Download each from its URL and put it at the path shown:"]
    for i in bad:
        lines += [f"  {i.url}", f"      -> {i.dest}"]
    lines += ["", "Or let the helper fetch them (resumable; needs huggingface_hub):",
              "  " + download_command(to, layout, include, python)]
    if layout == "diffusers" and not include:
        lines.append("(The other layout, native model.pt + Qwen2.5-VL-3B + UniPic2, also works: --layout native.)")
    return False, lines


# ---------------------------------------------------------------------------------------- downloading

def _hub(repo: str = "deepgenteam/DeepGen-1.0-diffusers"):
    """huggingface_hub, once its endpoint has answered (an unreachable one is reported at once, in one line)."""
    try:
        import huggingface_hub
    except ImportError as e:
        raise SystemExit(f"downloading needs huggingface_hub, which this Python ({sys.executable}) cannot import "
                         f"({e}). Install it with:\n  {sys.executable} -m pip install huggingface_hub\n"
                         "or download the files by hand (see --dry-run).") from e
    probe_endpoint(repo)
    return huggingface_hub


def _lfs_sha(entry) -> str | None:
    lfs = getattr(entry, "lfs", None)
    if lfs is None:
        return None
    return lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)


def remote_plan(items: list[Planned], list_files, revision: str | None = None,
                extras: bool = True) -> list[tuple[Planned, str | None]]:
    """Replace each part's table rows by the repository's actual files matching its patterns (exact size
    and LFS sha256); extras=False keeps just the rows given. `list_files(repo, revision)` -> iterable of
    objects with .path/.size/.lfs."""
    out: list[tuple[Planned, str | None]] = []
    for part in dict.fromkeys(i.spec.part for i in items):
        p = PARTS[part]
        ours = {i.spec.path: i for i in items if i.spec.part == part}
        root = next(iter(ours.values())).root
        remote = {e.path: e for e in list_files(p.repo, revision) if getattr(e, "size", None) is not None
                  and (e.path in ours if not extras else any(fnmatch.fnmatch(e.path, pat) for pat in p.patterns))}
        gone = [path for path, i in ours.items() if i.spec.required and path not in remote]
        if gone:
            raise SystemExit(f"{p.repo} does not have {gone} (any more?): the DeepGen file table needs an update; "
                             f"please report it.")
        for path, e in sorted(remote.items()):
            spec = ours[path].spec if path in ours else FileSpec(part, path, required=False)
            sha = _lfs_sha(e)
            if spec.sha256 and sha and sha != spec.sha256:
                print(f"note: {p.repo}/{path} changed upstream (sha256 {sha}, table has {spec.sha256}); "
                      "using the hub's", file=sys.stderr)
            out.append((Planned(spec, root, e.size), sha or spec.sha256))
    return out


def download(to, layout: str = "diffusers", include=None, revision: str | None = None,
             verify_sha256: bool = False, hub=None) -> list[Path]:
    """Fetch every file of the layout that is not already complete. Returns the files written."""
    items = plan(to, layout, include)
    return download_items(items, revision, verify_sha256, hub)


def download_items(items: list[Planned], revision: str | None = None, verify_sha256: bool = False, hub=None,
                   extras: bool = True) -> list[Path]:
    """Fetch the planned files (with the small extras matching each part's patterns unless extras=False)
    that are not already complete. Returns the files written. hub: the huggingface_hub module (default,
    see _hub) or a stand-in with its HfApi and hf_hub_download."""
    hub = hub or _hub(items[0].part.repo)
    api = hub.HfApi()

    def list_files(repo, rev):
        try:
            return [e for e in api.list_repo_tree(repo, recursive=True, revision=rev) if hasattr(e, "size")]
        except Exception as e:  # requests, httpx or hub errors, by hub version: one readable line, no traceback
            raise SystemExit(_unreachable(repo, e)) from None

    todo = remote_plan(items, list_files, revision, extras)
    total = sum(i.size or 0 for i, _ in todo)
    print(f"{len(todo)} files, {human(total)} in total")
    written = []
    for n, (item, sha) in enumerate(todo, 1):
        label = f"[{n}/{len(todo)}] {item.part.repo}/{item.spec.path} ({human(item.size)})"
        problem = state(item, verify_sha256, sha)
        if problem is None:
            print(f"{label}: already complete, skipped")
            continue
        print(f"{label} -> {item.dest}" + ("" if problem == "missing" else f"  (re-fetching: {problem})"))
        try:
            hub.hf_hub_download(item.part.repo, item.spec.path, revision=revision, local_dir=item.root)
        except Exception as e:
            raise SystemExit(_unreachable(f"{item.part.repo}/{item.spec.path}", e)) from None
        after = state(item, verify_sha256, sha)
        if after is not None:
            raise SystemExit(f"{item.dest}: {after} after downloading; delete it and run again")
        written.append(item.dest)
    print(f"done: {len(written)} downloaded, {len(todo) - len(written)} already complete")
    return written


def destination_problem(to: Path) -> str | None:
    """Why `to` cannot take a download: a file, or a folder whose parent does not exist either (a mistyped
    path rather than a new model folder). A missing folder in an existing one is fine: see announce_folder."""
    if to.exists() and not to.is_dir():
        return f"{to} is a file, not a folder: pass the models/deepgen folder of your ComfyUI"
    if not to.exists() and not to.parent.is_dir():
        return (f"{to} does not exist, nor does {to.parent}: check the path (a download creates a new folder only "
                f"inside an existing one; to use this path anyway: mkdir -p {_q(to)})")
    return None


def announce_folder(to: Path) -> None:
    """The download creates a destination that does not exist yet: say so before it starts."""
    if not to.exists():
        print(f"note: {to} does not exist yet; the download creates it", flush=True)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def probe_endpoint(repo: str, timeout: float = 6.0) -> None:
    """Exit at once with one line when the hub cannot be reached: its client retries for ~25 s, printing a
    line per retry, before failing. Any HTTP answer (even an error status) means it is reachable."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint(), method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, a malformed HF_ENDPOINT
        reason = getattr(e, "reason", None)
        raise SystemExit(_unreachable(repo, reason if isinstance(reason, Exception) else e)) from None


def _unreachable(what: str, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return (f"download failed: could not fetch {what} from {endpoint()} "
            f"({type(e).__name__}: {first}). Check the network (or HF_ENDPOINT / HTTPS_PROXY) and run the same command "
            "again: it resumes. Or fetch the files by hand (their URLs: --check).")


# ---------------------------------------------------------------------------------------- CLI

def default_to() -> Path | None:
    """<X>/models/deepgen when this pack is <X>/custom_nodes/<pack>, X a ComfyUI (main.py) or a ComfyUI
    --base-directory (models/): as found, as reached through a link from the shell's directory ($PWD),
    or as linked by scripts/run_example.sh into its workspace ($DEEPGEN_HOME/workspace)."""
    home = Path(os.environ.get("DEEPGEN_HOME") or Path.home() / ".cache" / "comfyui-deepgen")
    candidates = [PACK_ROOT, Path(os.environ.get("PWD") or PACK_ROOT), home / "workspace" / "custom_nodes" / "ComfyUI-DeepGen"]
    for pack in candidates:
        root = pack.parent.parent
        try:
            ours = pack.resolve() == PACK_ROOT.resolve()
        except OSError:
            continue
        if ours and pack.parent.name == "custom_nodes" and ((root / "main.py").is_file() or (root / "models").is_dir()):
            return root / "models" / "deepgen"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepgen_model.download", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Parts: " + "; ".join(f"{p.name} = {p.repo} -> {p.folder}/"
                                                              for p in PARTS.values()) +
                                        ".\n\nExit status: " + __doc__.split("Exit status: ")[1].strip())
    ap.add_argument("--to", type=Path, default=default_to(),
                    help="the models/deepgen folder of your ComfyUI (default: found from this pack's location)")
    ap.add_argument("--layout", choices=[*LAYOUTS, "auto"], default="auto",
                    help="diffusers (default for downloads) or native; auto: --check picks the one present")
    ap.add_argument("--include", nargs="+", metavar="PART", choices=list(PARTS),
                    help=f"only these parts ({', '.join(PARTS)}) instead of the whole layout")
    ap.add_argument("--dry-run", action="store_true", help="print the file table and what is present; fetch nothing")
    ap.add_argument("--check", action="store_true",
                    help="verify an existing folder; exit 1 listing each missing file and where it goes")
    ap.add_argument("--verify-sha256", action="store_true", help="also hash the files with a known SHA-256 (slow)")
    ap.add_argument("--revision", default=None, help="repository revision (default: main)")
    ap.add_argument("--markdown", action="store_true", help="print the file table as Markdown and exit")
    ap.add_argument("--file", nargs="+", type=Path, metavar="PATH",
                    help="fetch just these files, each named by where it goes (as --check and load errors print them: "
                         ".../DeepGen-1.0-diffusers/vlm/model-00002-of-00002.safetensors); --to/--layout are not needed")
    a = ap.parse_args(argv)
    if a.markdown:
        print(markdown_table())
        return 0
    if a.file:
        return fetch_files(a.file, a.revision, a.verify_sha256)
    if a.to is None and not a.dry_run:  # the table needs no destination; the rest does
        ap.error("--to is required: this checkout is not in (or linked into) a ComfyUI's custom_nodes folder; pass "
                 "the models/deepgen folder of your ComfyUI, e.g. --to ~/ComfyUI/models/deepgen")
    to = a.to.expanduser().absolute() if a.to else Path("<ComfyUI>", "models", "deepgen")
    layout = (detect(to) if a.check else "diffusers") if a.layout == "auto" else a.layout
    if a.check:
        ok, lines = check_report(to, layout, a.include, a.verify_sha256, python=_q(sys.executable))
        print("\n".join(lines))
        return 0 if ok else 1
    if a.dry_run:
        items = plan(to, layout, a.include)
        where = f"would fetch into {to}" if a.to else "goes into your ComfyUI's models/deepgen (--to also shows what is there)"
        print(f"DeepGen 1.0, layout {layout!r}: {where} (sizes approximate; "
              "other small files matching each part's patterns come along):")
        print("\n".join(table_lines(items, with_state=a.to is not None)))
        print(f"total ≈{human(sum(i.spec.approx_bytes or 0 for i in items))}")
        return 0
    if problem := destination_problem(to):
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    announce_folder(to)
    try:
        download(to, layout, a.include, a.revision, a.verify_sha256)
    except SystemExit as e:  # unreachable hub, a corrupt arrival: one readable line already
        print(e, file=sys.stderr)
        return EXIT_DOWNLOAD_FAILED
    ok, lines = check_report(to, layout, a.include)
    print("\n".join(lines))
    return 0 if ok else EXIT_INCOMPLETE


def fetch_files(paths, revision=None, verify_sha256: bool = False, hub=None) -> int:
    """--file: fetch exactly these table files, each into the folder its path names (an exit status)."""
    items = [source_of(p.expanduser()) for p in paths]
    if unknown := [str(p) for p, i in zip(paths, items) if i is None]:
        print(f"not a file of the DeepGen download table: {', '.join(unknown)}. Name each file by where it goes, "
              "ending in its path inside the repository (e.g. .../DeepGen-1.0-diffusers/vlm/model-00002-of-00002"
              ".safetensors); --dry-run lists them.", file=sys.stderr)
        return EXIT_USAGE
    if problem := next(filter(None, (destination_problem(i.root) for i in items)), None):
        print(problem, file=sys.stderr)
        return EXIT_USAGE
    try:
        download_items(items, revision, verify_sha256, hub, extras=False)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return EXIT_DOWNLOAD_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
