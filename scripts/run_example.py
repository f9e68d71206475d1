"""Run the text-to-image example on a real ComfyUI with this pack (called by scripts/run_example.sh).

Checks the weights, starts ComfyUI on 127.0.0.1, queues the API-format text-to-image workflow, waits
for it over /history, prints the saved image's path and always stops the server. It talks to ComfyUI
through the project's one HTTP client (deepgen_batch.api) and checks weights with
deepgen_model.download: standard library only, unless --demo (which builds the tiny random model of
deepgen_model/tiny.py with torch).

Exit status: 0 image saved; 1 anything else (the reason is printed); 2 a bad option (named, with the
nearest valid value: --steps 0, --size 100x100, a --models folder that does not exist); 3 weights missing
(the list of files is printed); 4 --download failed (the hub unreachable, or a file arrived damaged);
5 (run_example.sh's setup) stopped before downloading PyPI's CUDA torch build: the message says how to go on.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from deepgen_batch.api import ComfyClient, ItemError, TransientError  # noqa: E402  (stdlib only)
from scripts.comfy_process import ComfyProcess, NotReady, free_port  # noqa: E402  (stdlib only)
from deepgen_batch.api import describe_failure, new_prompt_id, output_images  # noqa: E402
from deepgen_model import download as dl  # noqa: E402  (stdlib-only modules; torch is not imported)
from deepgen_model.errors import DeepGenInputError  # noqa: E402
from deepgen_model.inputs import check_output_size, check_steps  # noqa: E402

WORKFLOW = REPO / "example_workflows" / "api" / "text_to_image.json"
EXIT_USAGE, EXIT_NO_WEIGHTS, EXIT_DOWNLOAD_FAILED = 2, 3, dl.EXIT_DOWNLOAD_FAILED
DEMO_FOLDER = "DeepGen-1.0-demo-random-weights"  # never the real release's name: both may be listed at once
DEMO_PREFIX = "DeepGen/demo_random_weights"
DEMO_STEPS, DEMO_SIZE = 8, (256, 256)  # unless --steps/--size say otherwise
DEMO_NOTE = ("DEMO: a tiny DeepGen look-alike with RANDOM weights (deepgen_model/tiny.py), so the picture is noise. "
             "This checks the install (ComfyUI, this pack, the engine and the example workflow), not the model.")
PROMPT = "a racoon holding a shiny red apple over its head"
# Checkpoint-loader settings per layout: widget values are paths relative to models/deepgen.
CHECKPOINTS = {
    "diffusers": {"ckpt_name": dl.PARTS["release"].folder, "vlm_base": "none", "dit_base": "none"},
    "native": {"ckpt_name": f"{dl.PARTS['model.pt'].folder}/model.pt", "vlm_base": dl.PARTS["qwen"].folder,
               "dit_base": dl.PARTS["unipic2"].folder},
}


def builtin_workflow() -> dict:
    """The API-format twin of the text-to-image example, for when example_workflows/api/ lacks it."""
    return {
        "1": {"class_type": "DeepGenCheckpointLoader",
              "inputs": {**CHECKPOINTS["diffusers"], "weight_dtype": "auto", "quantization": "none",
                         "attention": "sdpa"}},
        "2": {"class_type": "DeepGenTextEncode",
              "inputs": {"vlm": ["1", 1], "scb": ["1", 2], "prompt": PROMPT, "negative_prompt": ""}},
        "3": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "4": {"class_type": "DeepGenSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "latent": ["3", 0],
                         "seed": 42, "steps": 50, "cfg": 4.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 3]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "DeepGen/text_to_image"}},
    }


def load_workflow(path: Path | None) -> tuple[dict, str]:
    path = path or (WORKFLOW if WORKFLOW.is_file() else None)
    if path is None:
        return builtin_workflow(), "built-in text-to-image graph"
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data = data.get("prompt", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise SystemExit(f"{path} is not an API-format workflow (a dict of nodes with class_type/inputs); "
                         "export one with 'Export (API)' in ComfyUI")
    return data, str(path)


def _nodes(prompt: dict, class_type: str) -> list[dict]:
    return [n for n in prompt.values() if n.get("class_type") == class_type]


def customise(prompt: dict, layout: str, steps=None, size=None, seed=None, text=None, weight_dtype=None) -> dict:
    """Point the graph at the weights found and apply the command-line overrides (in place; returned)."""
    loaders = _nodes(prompt, "DeepGenCheckpointLoader")
    if not loaders:
        raise SystemExit("the workflow has no DeepGenCheckpointLoader node")
    for n in loaders:
        n["inputs"].update(CHECKPOINTS[layout])
        if weight_dtype:
            n["inputs"]["weight_dtype"] = weight_dtype
    for n in _nodes(prompt, "DeepGenSampler"):
        n["inputs"].update({k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None})
    if size:
        for n in _nodes(prompt, "EmptySD3LatentImage"):
            n["inputs"].update(width=size[0], height=size[1])
    if text is not None:
        for n in _nodes(prompt, "DeepGenTextEncode"):
            n["inputs"]["prompt"] = text
    return prompt


def parse_size(value: str, flag: str = "--size") -> tuple[int, int]:
    """WIDTH[xHEIGHT] -> (width, height), by the engine's output-size rule; else DeepGenInputError."""
    w, _, h = value.strip().lower().partition("x")
    try:
        size = (int(w), int(h or w))
    except ValueError:
        raise DeepGenInputError(f"{flag} {value}: use WIDTH[xHEIGHT] in pixels, e.g. 512 or 768x512") from None
    return check_output_size(*size, name=f"{flag} {value}: ")


def parse_steps(value: str, flag: str = "--steps") -> int:
    """A step count by the engine's rule (1..1000); else DeepGenInputError offering the nearest."""
    for kind in (int, float):
        try:
            return check_steps(kind(value), name=flag)
        except ValueError as e:
            if isinstance(e, DeepGenInputError):
                raise
    return check_steps(value, name=flag)


# ---------------------------------------------------------------------------------------- server

class Server(ComfyProcess):
    """The ComfyUI the main command runs the workflow on (scripts/comfy_process.py), with a client and a progress
    line; a start that fails ends the command with the server's log."""

    def __init__(self, comfyui: Path, base: Path | None, models: Path | None, port: int, cpu: bool, log_path: Path):
        # if this helper is killed outright, run_example.sh's EXIT trap reads this pid file
        example_pid = os.environ.get("DEEPGEN_EXAMPLE_PIDFILE")
        super().__init__(comfyui, log_path, python=sys.executable, base=base, models=models, port=port, cpu=cpu,
                         isolated=False,
                         pid_files=[example_pid] if example_pid else [])
        self.client = ComfyClient(self.url)

    def progress(self) -> str:
        text = self.log_tail(5).strip().splitlines()
        return text[-1].strip()[:120] if text else ""

    def wait_ready(self, timeout: float) -> float:
        try:
            return super().wait_ready(timeout)
        except NotReady as e:
            fail(str(e))


def fail(message: str, code: int = 1):
    print(f"run_example: {message}", file=sys.stderr)
    raise SystemExit(code)


def has_accelerator(python: str) -> bool:
    probe = ("import torch; print(bool(torch.cuda.is_available() or getattr(torch, 'xpu', None) and "
             "torch.xpu.is_available() or torch.backends.mps.is_available()))")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def run(server: Server, prompt: dict, timeout: float) -> dict:
    """Queue the prompt and wait for its /history entry; returns it, or exits with the server's error."""
    client, prompt_id = server.client, new_prompt_id()
    try:
        client.queue_prompt(prompt, prompt_id, new_prompt_id())
    except (ItemError, TransientError) as e:
        fail(f"ComfyUI did not accept the workflow: {e}")
    print(f"queued prompt {prompt_id}; waiting (server log: {server.log_path})", flush=True)
    t0 = last = time.monotonic()
    while True:
        if server.proc.poll() is not None:
            fail(f"ComfyUI exited ({server.proc.returncode}) while running the workflow:\n{server.log_tail()}")
        try:
            entry = client.history(prompt_id)
        except TransientError:  # a busy server may miss one poll; a dead one is caught above
            entry = None
        status = (entry or {}).get("status") or {}
        if status.get("completed") or status.get("status_str") == "error":
            return entry
        now = time.monotonic()
        if now - t0 > timeout:
            client.cancel(prompt_id)
            fail(f"the workflow did not finish within {timeout:.0f}s (raise --timeout; CPU runs are slow)")
        if now - last >= 15:
            print(f"  ... {now - t0:.0f}s  {server.progress()}", flush=True)
            last = now
        time.sleep(0.5)


def images_of(entry: dict, output_dir: Path) -> list[Path]:
    return [output_dir / img.get("subfolder", "") / img["filename"] for img in output_images(entry)]


def build_demo_release(root: Path) -> Path:
    """The tiny random DeepGen (deepgen_model/tiny.py, seed 0) as a diffusers release under `root`.

    The very models the test suite runs, not a second copy of them: the demo is a check of the install.
    It ships with the engine, so an installed pack (without tests/) runs it too."""
    try:
        import diffusers, tokenizers, transformers  # noqa: F401, E401  (the builders import them only when called)
        from deepgen_model import tiny as deepgen_tiny
    except ImportError as e:
        fail(f"--demo needs torch, transformers, diffusers and tokenizers in this Python ({sys.executable}): {e}")
    t0 = time.monotonic()
    release = deepgen_tiny.write_diffusers_release(root / DEMO_FOLDER, deepgen_tiny.build_tiny_components(0))
    print(f"built the tiny random-weight DeepGen in {time.monotonic() - t0:.1f}s: {release}", flush=True)
    return release


# ---------------------------------------------------------------------------------------- main

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line: argparse's usage block would show the helper's own --comfyui as required
        fail(f"{message} (every option: bash scripts/run_example.sh --help)", EXIT_USAGE)


def options(argv=None) -> argparse.Namespace:
    """The command line, checked: values by the engine's rules (nearest valid value offered), a --models
    folder that exists. run_example.sh calls this first (--check-options), before any setup."""
    env = os.environ.get
    ap = Parser(prog="bash scripts/run_example.sh", description=__doc__.split("\n\n")[0],
                epilog="run_example.sh also takes --python PY (the Python that runs ComfyUI); without --comfyui it "
                       "sets up a CPU-only ComfyUI in $DEEPGEN_HOME and uses --base-dir $DEEPGEN_HOME/workspace, so "
                       "the weights go in $DEEPGEN_HOME/workspace/models/deepgen (default "
                       "~/.cache/comfyui-deepgen/workspace/models/deepgen). "
                       "Exit status: " + __doc__.split("Exit status: ")[1].strip())
    ap.add_argument("--comfyui", type=Path, help="the ComfyUI folder (with main.py); run_example.sh fills it in")
    ap.add_argument("--base-dir", type=Path, help="ComfyUI --base-directory (custom_nodes/, models/, output/ ...)")
    ap.add_argument("--models", type=Path, default=env("DEEPGEN_EXAMPLE_MODELS") or None,
                    help="folder holding the DeepGen model folders (default: <base or ComfyUI>/models/deepgen)")
    ap.add_argument("--port", type=int, default=int(env("DEEPGEN_EXAMPLE_PORT", "0")), help="default: a free port")
    ap.add_argument("--steps", default=env("DEEPGEN_EXAMPLE_STEPS") or None,
                    help="sampling steps, 1..1000 (default: the workflow's, 50)")
    ap.add_argument("--size", default=env("DEEPGEN_EXAMPLE_SIZE") or None,
                    help="WIDTH[xHEIGHT], multiples of 16 (default: the workflow's, 512x512)")
    ap.add_argument("--seed", type=int, help="default: the workflow's")
    ap.add_argument("--prompt", help="text prompt (default: the workflow's)")
    ap.add_argument("--weight-dtype", choices=("auto", "bf16", "fp16", "fp32"), help="default: the workflow's")
    ap.add_argument("--workflow", type=Path, help=f"API-format workflow (default: {WORKFLOW.relative_to(REPO)})")
    ap.add_argument("--out", type=Path, help="also copy the image here")
    ap.add_argument("--download", action="store_true", help="download missing weights first (huggingface_hub)")
    ap.add_argument("--demo", action="store_true",
                    help="no weights needed: build a tiny random-weight DeepGen (seconds) and run the same workflow "
                         "with it; the picture is noise; this checks the install, not the model")
    ap.add_argument("--layout", choices=(*dl.LAYOUTS, "auto"), default="auto",
                    help="which release to use/download (auto: whichever is present, else diffusers)")
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                    help="auto: --cpu when this Python's torch sees no GPU")
    ap.add_argument("--timeout", type=float, default=float(env("DEEPGEN_EXAMPLE_TIMEOUT", "7200")),
                    help="seconds to wait for the image (default 7200: CPU runs are slow)")
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--check-options", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        a.steps = parse_steps(a.steps) if a.steps is not None else None
        a.size = parse_size(a.size) if a.size is not None else None
    except DeepGenInputError as e:
        fail(str(e), EXIT_USAGE)
    if a.models is not None and not a.demo:
        a.models = a.models.expanduser().absolute()
        problem = dl.destination_problem(a.models) if a.download else None if a.models.is_dir() else (
            f"--models {a.models}: folder does not exist. Check the path (the folder that holds "
            f"{dl.PARTS['release'].folder}/); for a new folder to download into, add --download.")
        if problem:
            fail(problem if problem.startswith("--models") else f"--models {problem}", EXIT_USAGE)
    return a


def main(argv=None) -> int:
    a = options(argv)
    if a.check_options:
        return 0
    if a.comfyui is None:
        fail("--comfyui is needed (bash scripts/run_example.sh fills it in)", EXIT_USAGE)
    comfyui = a.comfyui.expanduser().resolve()
    if not (comfyui / "main.py").is_file():
        fail(f"{comfyui} is not a ComfyUI folder (no main.py)")
    base = a.base_dir.expanduser().resolve() if a.base_dir else None
    home = base or comfyui
    models = a.models or home / "models" / "deepgen"

    demo_dir = None
    if a.demo:
        print(DEMO_NOTE, flush=True)
        demo_dir = Path(tempfile.mkdtemp(prefix="deepgen-demo-"))
        build_demo_release(demo_dir)
        layout, extra_models = "diffusers", demo_dir
    else:
        layout = dl.detect(models) if a.layout == "auto" else a.layout
        if a.download:
            dl.announce_folder(models)
            try:
                dl.download(models, layout)
            except SystemExit as e:  # the hub unreachable, a damaged arrival: one line, said at once
                fail(str(e), EXIT_DOWNLOAD_FAILED)
        ok, lines = dl.check_report(models, layout, python=dl._q(sys.executable))
        print("\n".join(lines), flush=True)
        if not ok:
            again = os.environ.get("DEEPGEN_EXAMPLE_CMD") or " ".join(
                dl._q(x) for x in ["python", "scripts/run_example.py", *sys.argv[1:]])
            print(f"\nDeepGen's weights are not in place, so the example cannot run yet. Put the files listed above "
                  f"where shown (or add --download), then run again:\n  cd {dl._q(REPO)} && {again.strip()}\n"
                  f"(To check the install without weights: bash scripts/run_example.sh --demo)", file=sys.stderr)
            return EXIT_NO_WEIGHTS
        extra_models = a.models and models

    prompt, source = load_workflow(a.workflow)
    if a.demo:  # noise needs no 50 steps at 512x512: the check of the install stays a matter of seconds of work
        a.steps, a.size = a.steps or DEMO_STEPS, a.size or DEMO_SIZE
    customise(prompt, layout, a.steps, a.size, a.seed, a.prompt, a.weight_dtype)
    if a.demo:
        for n in _nodes(prompt, "DeepGenCheckpointLoader"):
            n["inputs"]["ckpt_name"] = DEMO_FOLDER
        for n in _nodes(prompt, "SaveImage"):
            n["inputs"]["filename_prefix"] = DEMO_PREFIX
    cpu = a.device == "cpu" or a.device == "auto" and not has_accelerator(sys.executable)
    log_path = home / "user" / "run_example-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"")  # this run's log alone
    port = a.port or free_port()
    print(f"workflow: {source}\nstarting ComfyUI ({comfyui}{', CPU only' if cpu else ''}) on http://127.0.0.1:{port}",
          flush=True)
    if cpu and not a.demo:
        print("note: no GPU; DeepGen (5B) on the CPU needs about 18 GB of RAM (17.9 GB peak measured at 512x512) "
              "and takes tens of minutes at 512x512/50 steps (try --steps 8 --size 256 for a first look)", flush=True)

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    server = Server(comfyui, base, extra_models, port, cpu, log_path).start()
    try:
        server.wait_ready(a.start_timeout)
        try:
            loader = server.client.object_info("DeepGenCheckpointLoader")
        except (ItemError, TransientError):
            loader = None
        if not loader:
            fail(f"ComfyUI started but the DeepGen nodes are missing (did the pack fail to import?). "
                 f"Log ({log_path}):\n{server.log_tail(60)}")
        t0 = time.monotonic()
        entry = run(server, prompt, a.timeout)
        if (entry.get("status") or {}).get("status_str") == "error":
            fail(f"the workflow failed: {describe_failure(entry)}\n(server log: {log_path})")
        images = [p for p in images_of(entry, home / "output") if p.is_file()]
        if not images:
            fail(f"the workflow finished but saved no image; outputs: {json.dumps(entry.get('outputs'))[:2000]}")
        print(f"done in {time.monotonic() - t0:.0f}s")
        for p in images:
            print(f"image saved: {p}")
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(images[0], a.out)
            print(f"copied to: {a.out}")
        if a.demo:
            print("The install works. The picture is noise because the weights are random; for real pictures get "
                  "the weights: bash scripts/run_example.sh (it lists every file and where it goes).")
        return 0
    finally:
        server.stop()
        if demo_dir is not None:
            shutil.rmtree(demo_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
