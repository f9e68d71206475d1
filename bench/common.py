"""Shared benchmark plumbing: models (tiny fixture release or real-size random weights), memory
meters, per-stage timers, and the table/JSON output every bench command prints and writes."""
from __future__ import annotations

import contextlib
import gc
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
import deepgen_model  # noqa: E402,F401  (first: its log filter must be in place before diffusers imports bitsandbytes)

PROMPT = "a Delft-blue vase holding the flower that symbolises the Netherlands, studio light"
EDIT_PROMPT = "make it night, with a full moon behind the vase"
GiB = 2**30


# ------------------------------------------------------------------ memory

class Memory:
    """Peak memory of named windows (they may nest or overlap).

    CPU: this process's RSS, sampled every 10 ms by a thread (plus at every open/close).
    CUDA: torch.cuda memory allocated (exact peaks; windows are not nested there)."""

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self._proc, self._open, self._lock = psutil.Process(), {}, threading.Lock()
        self.overall = 0  # largest peak of any closed window
        if not self.cuda:
            threading.Thread(target=self._run, daemon=True).start()

    def now(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else self._proc.memory_info().rss

    def _run(self):
        while True:
            rss = self._proc.memory_info().rss
            with self._lock:
                for k in self._open:
                    self._open[k] = max(self._open[k], rss)
            time.sleep(0.01)

    def open(self, key) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = self.now()
        with self._lock:
            self._open[key] = start
        return start

    def close(self, key) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            with self._lock:
                self._open.pop(key, None)
        else:
            now = self.now()
            with self._lock:
                peak = max(self._open.pop(key, now), now)
        self.overall = max(self.overall, peak)
        return peak


class Stages:
    """Times (and peak memory of) calls to methods of live objects, by stage name.

    wrap(obj, "forward", "DiT step") replaces the instance attribute for the lifetime of the
    Stages (restore() puts the originals back). Each record: seconds, calls, peak bytes."""

    def __init__(self, memory: Memory):
        self.memory, self.records, self._undo, self._depth = memory, {}, [], 0

    def wrap(self, obj, method: str, name: str):
        original = getattr(obj, method)
        had_own = method in vars(obj)

        def timed(*args, **kwargs):
            key = object()
            self.memory.open(key)
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.memory.cuda:
                    torch.cuda.synchronize()
                rec = self.records.setdefault(name, {"seconds": 0.0, "calls": 0, "peak_bytes": 0, "each": []})
                rec["each"].append(time.perf_counter() - t)
                rec["seconds"] += rec["each"][-1]
                rec["calls"] += 1
                rec["peak_bytes"] = max(rec["peak_bytes"], self.memory.close(key))

        setattr(obj, method, timed)
        self._undo.append((obj, method, original if had_own else None))
        return self

    def restore(self):
        for obj, method, original in reversed(self._undo):
            if original is None:
                delattr(obj, method)
            else:
                setattr(obj, method, original)
        self._undo.clear()

    def take(self) -> dict:
        out, self.records = self.records, {}
        return out


@contextlib.contextmanager
def measured(memory: Memory, out: dict):
    """with measured(mem, row): ... -> row["seconds"], row["peak_gib"] (RSS or CUDA allocated)."""
    key = object()
    memory.open(key)
    t = time.perf_counter()
    try:
        yield out
    finally:
        if memory.cuda:
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - t
        out["peak_gib"] = memory.close(key) / GiB


def settle():
    """Free what can be freed, and give freed heap back to the OS so RSS measures what is live."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def param_bytes(module: torch.nn.Module, device=None) -> int:
    """Bytes of parameters + buffers (optionally only those on `device`); shared tensors counted once."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if device is not None and t.device.type != torch.device(device).type:
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


# ------------------------------------------------------------------ models

def tiny_release(path: str | Path | None = None) -> Path:
    """The fixture's diffusers release folder (written to a temp folder unless `path` exists)."""
    if path and (Path(path) / "model_index.json").is_file():
        return Path(path)
    from deepgen_model import tiny as deepgen_tiny

    root = Path(path) if path else Path(tempfile.mkdtemp(prefix="deepgen_bench_"))
    return deepgen_tiny.write_diffusers_release(root / "DeepGen-1.0-diffusers", deepgen_tiny.build_tiny_components(0))


def materialise(model: torch.nn.Module, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """Fill meta parameters with random N(0, 0.02) weights (1 for 1-D weights, 0 for biases)."""
    from accelerate.utils import set_module_tensor_to_device

    g = torch.Generator().manual_seed(seed)
    for name, p in list(model.named_parameters()):
        if p.ndim >= 2:
            value = torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02).to(dtype)
        else:
            value = (torch.ones if name.endswith("weight") else torch.zeros)(p.shape, dtype=dtype)
        set_module_tensor_to_device(model, name, "cpu", value=value, dtype=dtype)
        del value
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval().requires_grad_(False)


def real_tokenizer_and_vlm_config():
    """The tiny offline tokenizer (no Qwen vocabulary offline) with the VLM config's special ids set to it."""
    from deepgen_model import tiny as deepgen_tiny
    from deepgen_model import configs
    from deepgen_model.validation import TOKEN_FIELDS

    tokenizer = deepgen_tiny.load_tokenizer()
    cfg = configs.get("vlm")
    for key, token in TOKEN_FIELDS.items():
        if key in cfg:
            cfg[key] = tokenizer.convert_tokens_to_ids(token)
    return tokenizer, cfg


def build_real(dtype: torch.dtype, parts=("vlm", "scb", "dit", "vae")) -> dict:
    """Real-size architectures (docs/inference.md#components) built on meta, then random weights stored in `dtype`."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from deepgen_model import SCBConnector, configs

    tokenizer, vlm_cfg = real_tokenizer_and_vlm_config()
    makers = {"vlm": lambda: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**vlm_cfg)),
              "scb": SCBConnector, "dit": lambda: SD3Transformer2DModel(**configs.get("dit")),
              "vae": lambda: AutoencoderKL(**configs.get("vae"))}
    out = {"tokenizer": tokenizer, "scheduler_config": configs.get("scheduler")}
    for i, name in enumerate(parts):
        with init_empty_weights(include_buffers=False):
            module = makers[name]()
        out[name] = materialise(module, dtype, seed=i)
    return out


def real_pipeline(compute=None):
    """(pipe, parts): the pack over real-size random bf16 weights, computing in `compute` (manual cast);
    None: each stage in the dtype the engine picks for this CPU (precision.cpu_compute_dtype)."""
    from deepgen_model import DeepGenPipeline
    from deepgen_model.precision import apply_manual_cast, cpu_compute_dtype

    parts = build_real(torch.bfloat16)
    for name in ("vlm", "scb", "dit", "vae"):
        apply_manual_cast(parts[name], compute or cpu_compute_dtype(name))
    pipe = DeepGenPipeline(parts["vlm"], parts["tokenizer"], parts["scb"], parts["dit"], parts["vae"],
                           parts["scheduler_config"])
    return pipe, parts


def reference_for(pipe, compute=torch.float32):
    """The independent official loop over the pack's own modules (same tensors, no copy)."""
    from bench.reference_loop import ReferenceDeepGen

    scb = pipe.scb
    heads = scb.config.num_attention_heads
    return ReferenceDeepGen.from_modules(pipe.vlm, pipe.tokenizer, scb.state_dict(), heads, pipe.transformer.dit,
                                         pipe.vae, pipe.scheduler_config, device=pipe.transformer.device,
                                         dtype=compute)


def reference_image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(size, size, 3, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ output

def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": psutil.cpu_count(),
            "load_avg_1m": round(psutil.getloadavg()[0], 2), "ram_gib": round(psutil.virtual_memory().total / GiB, 1),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for mod in ("transformers", "diffusers"):
        info[mod] = __import__(mod).__version__
    return info


@contextlib.contextmanager
def machine_load(out: dict):
    """with machine_load(row): ... -> row["load_avg_1m"] (at the start) and, over the window, the cores
    busy with OTHER processes (machine busy CPU time minus this process's, per wall second) and the
    cores the hypervisor stole: a shared box's noise, recorded next to each timing."""
    proc = psutil.Process()
    busy = lambda c: c.user + c.nice + c.system + c.irq + c.softirq  # noqa: E731
    own = lambda: sum(proc.cpu_times()[:4])  # noqa: E731  user, system, children
    c0, o0, t0 = psutil.cpu_times(), own(), time.perf_counter()
    out["load_avg_1m"] = round(psutil.getloadavg()[0], 2)
    try:
        yield out
    finally:
        c1, o1, wall = psutil.cpu_times(), own(), max(time.perf_counter() - t0, 1e-9)
        out["cpu_s"] = o1 - o0  # this process's own CPU seconds: its work, less sensitive to the others
        out["other_cpu_cores"] = round(max(0.0, (busy(c1) - busy(c0)) - (o1 - o0)) / wall, 2)
        out["steal_cores"] = round((getattr(c1, "steal", 0.0) - getattr(c0, "steal", 0.0)) / wall, 2)


def table(rows: list[dict], columns: list[tuple[str, str, str]], title: str = "") -> str:
    """columns: (key, header, format) e.g. ("seconds", "s", "{:.2f}")."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("" if r.get(k) is None else (fmt.format(r[k]) if fmt else str(r[k]))) for k, _, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = [title] if title else []
    for j, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path, payload: dict) -> None:
    if path:
        payload = {"environment": environment(), "command": " ".join(sys.argv), **payload}
        Path(path).write_text(json.dumps(payload, indent=2, default=str))
