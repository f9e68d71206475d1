"""Running a batch: worker threads, least-busy server choice, retries, progress, downloads, manifest rows."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import re
import socket
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from .api import ComfyClient, ItemError, TransientError, describe_failure, new_prompt_id, output_images
from .manifest import Manifest
from .plan import Item
from .workflow import OUTPUT_SUBFOLDER, Workflow, fingerprint
from .ws import TEXT

UPLOAD_SUBFOLDER = "deepgen-batch"
DONE_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
               (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


class Cancelled(Exception):
    """The run is stopping (Ctrl-C): leave the item without a manifest row, so a resume redoes it."""


def read_image(path: Path) -> tuple[bytes, str]:
    """-> (bytes, extension) of a file that at least starts like an image ComfyUI's LoadImage reads."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ItemError(f"unreadable image {path}: {e.strerror or e}") from None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, ".webp"
    for magic, ext in _SIGNATURES:
        if data.startswith(magic):
            return data, ext
    what = "the file is empty" if not data else "not a PNG, JPEG, WebP, GIF, BMP or TIFF file"
    raise ItemError(f"unreadable image {path}: {what}")


@dataclasses.dataclass
class Prepared:
    data: bytes
    upload_name: str     # content hash: re-uploads are idempotent and never clobber a queued job's input
    fingerprint: str


def prepare(item: Item, workflow: Workflow) -> Prepared:
    data, ext = read_image(item.source)
    name = hashlib.sha256(data).hexdigest()[:24] + ext
    prompt = fill(workflow, item, f"{UPLOAD_SUBFOLDER}/{name}", "")
    return Prepared(data, name, fingerprint(prompt))


def fill(workflow: Workflow, item: Item, image: str, prefix: str) -> dict:
    return workflow.fill(image=image, instruction=item.instruction, seed=item.seed, output_prefix=prefix,
                         negative=item.negative, width=item.width, height=item.height, max_side=item.max_side)


def _server_prefix(item: Item, prompt_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(item.output_stem).name)[:80] or "item"
    return f"{OUTPUT_SUBFOLDER}/{stem}-{prompt_id[:8]}"  # unique: several runs/servers never share names


def _write_atomic(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Scheduler:
    """Hands out servers: among those with a free slot (fewer than per_server of our jobs in flight) and
    not in cool-down after a failure, the least busy: prompts on its /queue that are not ours, plus ours."""

    def __init__(self, clients: list[ComfyClient], per_server: int, cooldown: float = 10.0, clock=time.monotonic):
        self.clients, self.per_server, self.cooldown, self.clock = clients, per_server, cooldown, clock
        self.inflight = {c.url: 0 for c in clients}
        self.ours = {c.url: set() for c in clients}
        self.down_until = {c.url: 0.0 for c in clients}
        self._cond = threading.Condition()

    def acquire(self, stop: threading.Event) -> ComfyClient:
        with self._cond:
            while True:
                if stop.is_set():
                    raise Cancelled()
                free = [c for c in self.clients if self.inflight[c.url] < self.per_server]
                now = self.clock()
                up = [c for c in free if self.down_until[c.url] <= now]
                if not up:
                    wait = min((self.down_until[c.url] - now for c in free), default=1.0)
                    self._cond.wait(max(0.05, min(wait, 1.0)))
                    continue
                scored, error = [], None
                for rank, c in enumerate(up):
                    try:
                        load = c.queue_load(self.ours[c.url])
                    except (TransientError, ItemError) as e:
                        self.down_until[c.url], error = self.clock() + self.cooldown, e
                        continue
                    scored.append((load + self.inflight[c.url], self.inflight[c.url], rank))
                if not scored:
                    raise TransientError(f"no server answered GET /queue ({error})")
                best = up[min(scored)[2]]
                self.inflight[best.url] += 1
                return best

    def register(self, client: ComfyClient, prompt_id: str):
        with self._cond:
            self.ours[client.url].add(prompt_id)

    def release(self, client: ComfyClient, prompt_id: str | None = None, failed: bool = False):
        with self._cond:
            self.inflight[client.url] -= 1
            self.ours[client.url].discard(prompt_id)
            if failed:
                self.down_until[client.url] = self.clock() + self.cooldown
            self._cond.notify_all()


@dataclasses.dataclass
class Settings:
    per_server: int = 2
    retries: int = 3
    retry_wait: float = 2.0      # first back-off; doubles per attempt, capped at 60 s
    timeout: float = 3600.0      # per attempt, from queueing to the finished history entry
    cooldown: float = 10.0       # a server that failed is not chosen again for this long
    history_grace: float = 30.0  # after the done event, how long the /history entry may lag
    poll: float = 0.5            # /history polling interval without a websocket


class Runner:
    def __init__(self, clients: list[ComfyClient], workflow: Workflow, out_dir: Path, manifest: Manifest,
                 settings: Settings, progress, sleep=None):
        self.clients, self.workflow, self.out_dir, self.manifest = clients, workflow, Path(out_dir), manifest
        self.settings, self.progress, self._sleep = settings, progress, sleep
        self.scheduler = Scheduler(clients, settings.per_server, settings.cooldown)
        self.stop = threading.Event()
        self.rows: list[dict] = []
        self._ws_warned = set()
        self._active, self._active_lock = 0, threading.Lock()

    # ------------------------------------------------------------------ the batch
    def run(self, items: list[Item]) -> list[dict]:
        work = queue.Queue()
        for item in items:
            work.put(item)
        slots = min(len(items), self.settings.per_server * len(self.clients))
        self._active = slots
        for slot in range(slots):
            threading.Thread(target=self._worker, args=(slot, work), daemon=True, name=f"batch-{slot}").start()
        # sleep, never Thread.join()/is_alive(): a Ctrl-C landing inside those can mark a running thread as
        # finished (CPython < 3.13), and we would exit before it cancelled its prompt on the server
        try:
            while self._active:
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.stop.set()
            self.progress.write("stopping: cancelling this run's prompts on the servers ...")
            deadline = time.monotonic() + 30
            while self._active and time.monotonic() < deadline:
                time.sleep(0.1)
            raise
        return self.rows

    def _worker(self, slot: int, work: queue.Queue):
        try:
            self._work(slot, work)
        finally:
            with self._active_lock:
                self._active -= 1

    def _work(self, slot: int, work: queue.Queue):
        while not self.stop.is_set():
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            try:
                row = self.process(slot, item)
            except Cancelled:
                return
            except Exception as e:  # a bug must not take the batch down with it: report it on the item
                traceback.print_exc(file=sys.stderr)
                row = self._row(item, None, time.monotonic(), 1, error=f"internal error: {e!r}")
            self.manifest.append(row)
            self.rows.append(row)
            self.progress.finish(slot, row)

    # ------------------------------------------------------------------ one item
    def _row(self, item: Item, prep: Prepared | None, t0: float, attempts: int, *, prompt_id=None, server=None,
             outputs=(), error=None) -> dict:
        outs = [self.manifest.relative(p) for p in outputs]
        return {"input": item.input, "instruction": item.instruction, "seed": item.seed, "width": item.width,
                "height": item.height, "max_side": item.max_side,
                "fingerprint": prep.fingerprint if prep else None, "prompt_id": prompt_id, "server": server,
                "status": "error" if error else "ok", "attempts": attempts,
                "seconds": round(time.monotonic() - t0, 3), "output": outs[0] if outs else None,
                "outputs": outs, "error": error,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def process(self, slot: int, item: Item) -> dict:
        t0 = time.monotonic()
        try:
            prep = prepare(item, self.workflow)
        except ItemError as e:
            return self._row(item, None, t0, 0, error=str(e))
        last = None
        for attempt in range(1, self.settings.retries + 2):
            client, prompt_id, failed = None, None, False
            try:
                client = self.scheduler.acquire(self.stop)
                prompt_id = new_prompt_id()
                outputs = self._attempt(slot, client, item, prep, prompt_id)
                return self._row(item, prep, t0, attempt, prompt_id=prompt_id, server=client.url, outputs=outputs)
            except ItemError as e:
                return self._row(item, prep, t0, attempt, prompt_id=prompt_id,
                                 server=client.url if client else None, error=str(e))
            except TransientError as e:
                last, failed = e, client is not None
                if attempt <= self.settings.retries:
                    self.progress.write(f"retrying {item.input} (attempt {attempt} failed: {e})")
            finally:
                if client is not None:
                    self.scheduler.release(client, prompt_id, failed)
            if attempt <= self.settings.retries:
                self._wait(min(60.0, self.settings.retry_wait * 2 ** (attempt - 1)))
        return self._row(item, prep, t0, self.settings.retries + 1,
                         error=f"gave up after {self.settings.retries + 1} attempts: {last}")

    def _wait(self, seconds: float):
        if self._sleep is not None:
            self._sleep(seconds)
        elif self.stop.wait(seconds):
            raise Cancelled()
        if self.stop.is_set():
            raise Cancelled()

    def _attempt(self, slot: int, client: ComfyClient, item: Item, prep: Prepared, prompt_id: str) -> list[Path]:
        self.progress.start(slot, item.input, client.url)
        image = client.upload(prep.data, prep.upload_name, UPLOAD_SUBFOLDER)
        prompt = fill(self.workflow, item, image, _server_prefix(item, prompt_id))
        client_id = new_prompt_id()
        ws = self._open_ws(client, client_id)
        queued = False
        try:
            client.queue_prompt(prompt, prompt_id, client_id)
            queued = True
            self.scheduler.register(client, prompt_id)
            entry = self._follow(slot, client, ws, prompt_id)
        except BaseException:
            if queued:  # do not leave work behind on a server we gave up on
                client.cancel(prompt_id)
            raise
        finally:
            if ws is not None:
                ws.close()
        if (entry.get("status") or {}).get("status_str") != "success":
            raise ItemError(describe_failure(entry))
        images = output_images(entry)
        if not images:
            raise ItemError("the prompt finished without saving an image (missing output: the workflow needs "
                            "a SaveImage node)")
        paths = []
        for k, image_info in enumerate(images):
            data = client.view(image_info)
            ext = Path(image_info["filename"]).suffix or ".png"
            path = self.out_dir / (item.output_stem + ("" if k == 0 else f"_{k + 1}") + ext)
            _write_atomic(path, data)
            paths.append(path)
        return paths

    def _open_ws(self, client: ComfyClient, client_id: str):
        try:
            return client.open_ws(client_id)
        except TransientError as e:
            if client.url not in self._ws_warned:
                self._ws_warned.add(client.url)
                self.progress.write(f"no websocket on {client.url} ({e}); following jobs by polling /history")
            return None

    def _follow(self, slot: int, client: ComfyClient, ws, prompt_id: str) -> dict:
        """Wait for the prompt: websocket events (progress bar; end event), with /history as the truth
        (checked every 10 s in case an event was missed, and polled if the websocket is gone)."""
        deadline = time.monotonic() + self.settings.timeout
        next_check, failures, ended = time.monotonic() + 10.0, 0, False
        while not ended:
            if self.stop.is_set():
                raise Cancelled()
            if time.monotonic() > deadline:
                raise ItemError(f"no result after {self.settings.timeout:.0f} s (--timeout); prompt cancelled")
            if ws is not None:
                try:
                    kind, payload = ws.recv(timeout=1.0)
                except socket.timeout:
                    kind = None
                except OSError:
                    ws.close()
                    ws = None
                    continue
                if kind == TEXT:
                    ended = self._event(slot, prompt_id, payload)
                if ended or time.monotonic() < next_check:
                    continue
                next_check = time.monotonic() + 10.0
            else:
                time.sleep(self.settings.poll)
            try:
                entry = client.history(prompt_id)
                failures = 0
            except TransientError:
                failures += 1
                if failures > 20:
                    raise
                continue
            if entry:
                return entry
        end = time.monotonic() + self.settings.history_grace
        while True:  # the history entry is stored just after the end event is sent
            entry = client.history(prompt_id)
            if entry:
                return entry
            if time.monotonic() > end:
                raise TransientError(f"{client.url}: prompt {prompt_id} ended but has no /history entry")
            time.sleep(min(0.1, self.settings.poll))

    def _event(self, slot: int, prompt_id: str, payload: bytes) -> bool:
        try:
            msg = json.loads(payload)
        except ValueError:
            return False
        data = msg.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
            return False
        if msg.get("type") == "progress":
            self.progress.step(slot, data.get("value"), data.get("max"))
        return msg.get("type") in DONE_EVENTS
