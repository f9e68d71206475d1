"""deepgen-batch command line: plan, resume, check the servers, run, summarise.

Exit status: 0 all items done, 1 some items failed (see the manifest), 2 bad arguments/inputs/workflow,
3 no server reachable, 4 the output folder or manifest cannot be written (disk full, read-only: what was
finished is kept; run the same command again once fixed), 130 interrupted (Ctrl-C; run the same command
again to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .api import ComfyClient, ItemError, TransientError
from .manifest import Manifest, StorageError, writable_folder
from .plan import SEED_MOD, Item, PlanError, build_plan, fold, read_mapping
from .progress import Progress
from .runner import Runner, Settings, prepare, remove_stale_temps
from .workflow import DEFAULT_CKPT, Workflow, WorkflowError, builtin, load

DEFAULT_SERVER = "http://127.0.0.1:8188"


class UsageError(Exception):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepgen-batch",
        description="Edit a folder of images with DeepGen on one or more ComfyUI servers (HTTP API). "
                    "Re-running the same command resumes: finished items are skipped.",
        epilog="Guide: docs/batch.md. Exit status: 0 ok, 1 some items failed, 2 bad input, 3 no server, "
               "4 cannot write the results or manifest (disk full, read-only), 130 interrupted.")
    p.add_argument("input", nargs="?", type=Path,
                   help="folder of images (default with --mapping: the mapping file's folder)")
    what = p.add_argument_group("what to do")
    what.add_argument("-i", "--instruction", help="one edit instruction for every image (or the fallback "
                                                  "for mapping rows without one)")
    what.add_argument("-m", "--mapping", type=Path, help="CSV/TSV (header: filename,instruction[,seed,width,"
                                                         "height,max_side,negative]) or JSONL with the same keys")
    what.add_argument("-o", "--output", type=Path, required=True,
                      help="folder for the results (<name>.png); not the input folder (a sub-folder of it is fine)")
    what.add_argument("--manifest", type=Path, help="manifest JSONL (default OUTPUT/manifest.jsonl)")
    what.add_argument("--recursive", action="store_true", help="also take images in sub-folders")
    what.add_argument("--limit", type=int, help="process at most N not-yet-done items in this run")
    what.add_argument("--force", action="store_true", help="redo every item, even those the manifest has as done")
    what.add_argument("--overwrite", action="store_true",
                      help="allow replacing pictures: redo finished items whose instruction, seed, image or "
                           "settings changed (by default they keep their result), and replace files in the output "
                           "folder that deepgen-batch did not make (by default such a file stops the run before "
                           "anything is queued)")
    what.add_argument("--dry-run", action="store_true", help="print the plan and the first filled workflow; "
                                                             "contact no server")
    wf = p.add_argument_group("workflow")
    wf.add_argument("--workflow", type=Path, help="API-format workflow JSON (Workflow > Export (API)) "
                                                  "instead of the built-in single-image edit graph")
    wf.add_argument("--ckpt", help=f"DeepGenCheckpointLoader ckpt_name (built-in default {DEFAULT_CKPT!r})")
    wf.add_argument("--steps", type=int, help="sampler steps (built-in default 50)")
    wf.add_argument("--cfg", type=float, help="CFG scale (built-in default 4.0)")
    wf.add_argument("--negative", help="negative prompt (built-in default: the authors' edit negative)")
    wf.add_argument("--max-side", type=int, help="long side of the resized reference, multiple of 32 (built-in "
                                                 "default 512); with one reference it sets the output size")
    wf.add_argument("--width", type=int, help="output width for multi-reference workflows (multiple of 16)")
    wf.add_argument("--height", type=int, help="output height for multi-reference workflows (multiple of 16)")
    wf.add_argument("--weight-dtype", choices=["auto", "bf16", "fp16", "fp32"], help="loader weight_dtype")
    wf.add_argument("--quantization", choices=["none", "8-bit", "4-bit nf4"], help="VLM quantization")
    wf.add_argument("--seed", type=lambda s: int(s, 0), default=0,
                    help="base seed (default 0). An item's seed is the mapping's, else the one the manifest records "
                         "for it, else the first 8 bytes of SHA-256 of 'BASE:<input path>#<k>' (k: its k-th row): "
                         "it depends only on the item's name, so adding or removing files changes no other seed")
    wf.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                    help="set any widget input; NODE is a node id or a class_type (all its nodes); VALUE is "
                         "JSON (2, 4.5, true, \"text\") or plain text. Repeatable")
    srv = p.add_argument_group("servers")
    srv.add_argument("-s", "--server", action="append", metavar="URL",
                     help=f"ComfyUI server URL, repeatable (default {DEFAULT_SERVER})")
    srv.add_argument("--per-server", type=int, default=2, help="jobs in flight per server (default 2: one runs "
                                                               "while the next is uploaded and queued)")
    srv.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                     help="extra HTTP header for every request, e.g. an Authorization for a proxy")
    srv.add_argument("--retries", type=int, default=3, help="retries of transient failures per item (default 3)")
    srv.add_argument("--retry-wait", type=float, default=2.0, help="first back-off in seconds, doubling (default 2)")
    srv.add_argument("--timeout", type=float, default=3600.0, help="seconds one job may take (default 3600)")
    srv.add_argument("--server-wait", type=float, default=300.0,
                     help="seconds to wait for a server that stops answering (restart) before its jobs are moved "
                          "or, with no server left, given up (default 300)")
    out = p.add_argument_group("display")
    out.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    out.add_argument("--version", action="version", version=f"deepgen-batch {__version__}")
    return p


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_workflow(args) -> Workflow:
    custom = args.workflow is not None
    wf = Workflow(load(args.workflow) if custom else builtin(args.ckpt or DEFAULT_CKPT))
    overrides = {"ckpt_name": args.ckpt if custom else None, "steps": args.steps, "cfg": args.cfg,
                 "weight_dtype": args.weight_dtype, "quantization": args.quantization}
    for name, value in overrides.items():
        if value is not None and not wf.set_everywhere(name, value):
            raise WorkflowError(f"the workflow has no node with a '{name}' widget to set")
    for spec in args.set:
        key, eq, raw = spec.partition("=")
        node, dot, name = key.rpartition(".")
        if not eq or not dot or not node or not name:
            raise WorkflowError(f"--set {spec!r}: use NODE.INPUT=VALUE, e.g. --set 4.steps=8")
        ids = [node] if node in wf.prompt else [i for i, n in wf.prompt.items() if n.get("class_type") == node]
        if not ids:
            raise WorkflowError(f"--set {spec!r}: no node id or class_type {node!r} in the workflow")
        for nid in ids:
            wf.set_input(nid, name, _value(raw))
    wf.targets = {role: wf._find(role) for role in wf.targets}  # --set may have changed what is a widget
    return wf


def _combo_options(spec):
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return spec[0]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return spec[1].get("options")
    return None


def preflight(clients: list[ComfyClient], wf: Workflow, log) -> list[ComfyClient]:
    """Drop unreachable servers; refuse (UsageError) a server that lacks a node class or a chosen file."""
    alive = []
    for c in clients:
        try:
            c.get_json("/queue", timeout=10)
        except (TransientError, ItemError) as e:
            log(f"warning: skipping {c.url}: {e}")
            continue
        alive.append(c)
    skip = wf.per_item_inputs()
    classes = sorted({n["class_type"] for n in wf.prompt.values()})
    for c in alive:
        for cls in classes:
            info = c.object_info(cls)
            if not info:
                raise UsageError(f"{c.url} has no node '{cls}': install the pack that provides it "
                                 "(DeepGen nodes: ComfyUI-DeepGen in custom_nodes) and restart ComfyUI")
            specs = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
            for nid, node in wf.prompt.items():
                if node["class_type"] != cls:
                    continue
                for name, value in node.get("inputs", {}).items():
                    options = _combo_options(specs.get(name))
                    if (nid, name) in skip or options is None or isinstance(value, list) or value in options:
                        continue
                    listed = ", ".join(map(str, options[:12])) or "nothing"
                    raise UsageError(f"{c.url}: {cls} (node {nid}) {name}={value!r} is not available there; "
                                     f"it offers: {listed}" + (" ..." if len(options) > 12 else "")
                                     + (". Put the DeepGen release folder into ComfyUI/models/deepgen/ or pass --ckpt"
                                        if name == "ckpt_name" else ""))
    return alive


def check_folders(input_dir: Path, out_dir: Path):
    """The output folder may be a sub-folder of the input folder, never the folder itself or above it."""
    src, out = input_dir.resolve(), out_dir.resolve()
    if out == src:
        raise UsageError(f"-o {out_dir} is the input folder: the results would be written among the originals. "
                         f"Pick another folder, e.g. -o {out_dir / 'edited'}")
    if out in src.parents:
        raise UsageError(f"-o {out_dir} contains the input folder {input_dir}: pick an output folder outside it "
                         f"(a sub-folder of the input folder is fine, e.g. -o {input_dir / 'edited'})")


def check_paths(input_dir: Path, out_dir: Path, manifest: Path, items: list[Item]):
    """deepgen-batch never writes inside the input folder, except into the output folder when that is a
    sub-folder of it (then the scan leaves it out), and never reads an input from the output folder."""
    check_folders(input_dir, out_dir)
    src, out = input_dir.resolve(), out_dir.resolve()

    def inside_input(path: Path) -> bool:  # the output folder, a sub-folder of the input one, does not count
        path = path.resolve()
        return (path == src or src in path.parents) and not (path == out or out in path.parents)

    if inside_input(manifest):
        raise UsageError(f"--manifest {manifest} is inside the input folder; keep it in the output folder")
    book = fold(manifest.resolve().as_posix())
    for item in items:
        result = fold((out_dir / item.output).resolve().as_posix())
        if book == result or book.startswith(result + "/") or result.startswith(book + "/"):
            raise UsageError(f"--manifest {manifest} is where the result of {item.input} goes "
                             f"({out_dir / item.output}); give the manifest another name (e.g. the default "
                             "OUTPUT/manifest.jsonl)")
        if inside_input(out_dir / item.output):
            raise UsageError(f"the result of {item.input} would be written inside the input folder {input_dir}; "
                             "pick an output folder outside it (or a sub-folder of it)")
        source = item.source.resolve()
        if out in source.parents:
            raise UsageError(f"input {item.input} is inside the output folder {out_dir}: pick another output folder")


def check_overwrites(out_dir: Path, manifest: Manifest, items: list[Item], made: dict):
    """Before anything is queued: every result name must be free, or hold a file this batch made."""
    foreign = []
    for item in items:
        path = out_dir / item.output
        if path.is_dir():
            raise UsageError(f"the result of {item.input} would be {path}, which is a folder; move it away")
        if (path.exists() or path.is_symlink()) and not Manifest.made_here(made, manifest.relative(path), path):
            foreign.append(f"{path} (result of {item.input})")
    if foreign:
        raise UsageError(f"{len(foreign)} result file(s) already exist and were not made by deepgen-batch for this "
                         f"manifest, or were changed since: " + "; ".join(foreign[:10])
                         + (" ..." if len(foreign) > 10 else "")
                         + ". Move them away, pick another -o, or pass --overwrite to replace them")


def _recorded(out_dir: Path, manifest: Manifest, seed_base: int) -> tuple[dict, dict]:
    """From the manifest's rows, with names relative to the output folder (as the plan names results):
    (folded result name -> the input it was given to, (input, result) -> the seed to keep). A seed is kept
    when it was derived under the same --seed (rows written before deepgen-batch 0.2, which record no
    seed_base, count as the same), so a finished item's picture and its resumed or redone run agree."""
    owned, seeds = {}, {}
    for row in manifest.rows():
        if not isinstance(row.get("output"), str):
            continue
        rel = os.path.relpath(manifest.root / row["output"], out_dir)
        if rel.startswith(".."):
            continue
        rel = Path(rel).as_posix()
        owned[fold(rel)] = row.get("input")
        seed = row.get("seed")
        if isinstance(seed, int) and row.get("seed_base", seed_base % SEED_MOD) == seed_base % SEED_MOD:
            seeds[(row.get("input"), rel)] = seed
    return owned, seeds


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def log(text):
        print(text, file=sys.stderr, flush=True)

    try:
        return _main(args, log)
    except (UsageError, PlanError, WorkflowError, ValueError) as e:
        log(f"deepgen-batch: error: {e}")
        return 2
    except StorageError as e:
        log(f"deepgen-batch: error: {e}. Nothing was queued: free some space, make the folder writable or pick "
            "another -o / --manifest")
        return 4
    except KeyboardInterrupt:
        log("deepgen-batch: interrupted; run the same command again to resume")
        return 130


def _main(args, log) -> int:
    if args.per_server < 1 or args.retries < 0 or (args.limit is not None and args.limit < 1) \
            or args.server_wait < 0:
        raise UsageError("--per-server and --limit must be >= 1, --retries and --server-wait >= 0")
    if not args.mapping and not args.instruction:
        raise UsageError("give --instruction TEXT (one edit for all images) or --mapping FILE")
    input_dir = args.input or (args.mapping.parent if args.mapping else None)
    if input_dir is None:
        raise UsageError("give the input folder")
    wf = build_workflow(args)
    rows = read_mapping(args.mapping) if args.mapping else None
    manifest = Manifest(args.manifest or args.output / "manifest.jsonl")
    if input_dir.is_dir():
        check_folders(input_dir, args.output)
    owned, seeds = _recorded(args.output, manifest, args.seed)
    items = build_plan(input_dir, rows, instruction=args.instruction, seed_base=args.seed,
                       recursive=args.recursive, width=args.width, height=args.height, max_side=args.max_side,
                       negative=args.negative, exclude=args.output, owned=owned, seeds=seeds)
    check_paths(input_dir, args.output, manifest.path, items)

    latest = {} if args.force else manifest.latest()
    todo, changed = [], []
    for item in items:
        row = latest.get((item.input, manifest.relative(args.output / item.output)))
        if not Manifest.is_done(row, manifest.root):
            todo.append(item)
            continue
        try:
            fp = prepare(item, wf).fingerprint
        except ItemError:
            fp = None  # the input is unreadable now: its finished result stays
        if Manifest.changed(row, fp):
            changed.append(item)
            if args.overwrite:
                todo.append(item)
    skipped = len(items) - len(todo)
    if args.limit is not None:
        todo = todo[:args.limit]
    log(f"deepgen-batch: {len(items)} items, {skipped} already done (manifest {manifest.path}), "
        f"{len(todo)} to run")
    if changed:
        log(f"deepgen-batch: {len(changed)} finished item(s) would be made differently now (instruction, seed, image "
            "or settings changed): " + ("redoing them (--overwrite)" if args.overwrite else
                                        "their results are kept; pass --overwrite to redo them") + ": "
            + ", ".join(i.input for i in changed[:10]) + (" ..." if len(changed) > 10 else ""))

    if args.dry_run:
        for item in todo:
            print(json.dumps({"input": item.input, "instruction": item.instruction, "seed": item.seed,
                              "output": item.output, "width": item.width, "height": item.height,
                              "max_side": item.max_side}, ensure_ascii=False))
        if todo:
            from .runner import fill, UPLOAD_SUBFOLDER
            log("first item's workflow (image name = its content hash once uploaded):")
            print(json.dumps(fill(wf, todo[0], f"{UPLOAD_SUBFOLDER}/<upload>", "deepgen-batch/<name>"), indent=1))
        return 0
    if not todo:
        print(f"nothing to do: all {len(items)} items are done ({manifest.path})")
        return 0
    made = manifest.made()
    if not args.overwrite:
        check_overwrites(args.output, manifest, todo, made)

    headers = {}
    for h in args.header:
        name, colon, value = h.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--header {h!r}: use 'Name: value'")
        headers[name.strip()] = value.strip()
    clients = [ComfyClient(url, headers) for url in dict.fromkeys(args.server or [DEFAULT_SERVER])]
    clients = preflight(clients, wf, log)
    if not clients:
        log("deepgen-batch: error: no ComfyUI server reachable (is it running? check --server)")
        return 3

    writable_folder(args.output)  # before anything is queued: a read-only or full output folder stops here
    manifest.check_writable()
    manifest.repair(log)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill stops like Ctrl-C: prompts cancelled
    remove_stale_temps(args.output)
    settings = Settings(per_server=args.per_server, retries=args.retries, retry_wait=args.retry_wait,
                        timeout=args.timeout, server_wait=args.server_wait, overwrite=args.overwrite)
    progress = Progress(len(todo), min(len(todo), settings.per_server * len(clients)), bars=not args.no_progress)
    reserved = {fold(manifest.relative(args.output / item.output)) for item in items} | {fold(manifest.path.name)}
    runner = Runner(clients, wf, args.output, manifest, settings, progress, reserved=reserved, made=made)
    t0 = time.monotonic()
    try:
        rows = runner.run(todo)
    finally:
        progress.close()
    failed = [r for r in rows if r["status"] != "ok"]
    per_server = {c.url: sum(1 for r in rows if r["server"] == c.url and r["status"] == "ok") for c in clients}
    print(f"deepgen-batch: {len(rows) - len(failed)} ok, {len(failed)} failed, {skipped} skipped (already done) "
          f"in {time.monotonic() - t0:.1f} s; " + ", ".join(f"{u}: {n}" for u, n in per_server.items()))
    for r in failed[:20]:
        print(f"  FAILED {r['input']}: {r['error']}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (status \"error\" in {manifest.path})")
    print(f"manifest: {manifest.path}")
    if runner.storage_error is not None:
        log(f"deepgen-batch: error: {runner.storage_error}. The run stopped there: the {len(rows) - len(failed)} "
            f"result(s) finished before it are kept with their manifest rows; {len(todo) - len(rows)} item(s) were "
            "not done (their prompts were cancelled on the servers). Free some space or make the folder writable, "
            "then run the same command again: it does the rest.")
        return 4
    return 1 if failed else 0
