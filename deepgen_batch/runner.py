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

from . import images
from .api import (ComfyClient, ItemError, TransientError, describe_failure, execution_error, new_prompt_id,
                  output_images)
from .manifest import Manifest, StorageError
from .plan import Item, fold
from .workflow import OUTPUT_SUBFOLDER, Workflow, fingerprint
from .ws import TEXT

UPLOAD_SUBFOLDER = "deepgen-batch"
DONE_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
TEMP_SUFFIX = ".deepgen-part"  # results being written: .<name>.<random>.deepgen-part next to their final name


class Cancelled(Exception):
    """The run is stopping (Ctrl-C): leave the item without a manifest row, so a resume redoes it."""


class LostPrompt(TransientError):
    """The server answers but no longer has the prompt (it restarted, or someone cleared its queue)."""


class ServersGone(ItemError):
    """No server has answered for --server-wait seconds: the items still to do get error rows."""


@dataclasses.dataclass
class Prepared:
    data: bytes
    upload_name: str     # content hash: re-uploads are idempotent and never clobber a queued job's input
    fingerprint: str


def prepare(item: Item, workflow: Workflow) -> Prepared:
    try:
        data, ext = images.read(item.source, item.input)
    except images.BadImage as e:
        raise ItemError(str(e)) from None
    name = hashlib.sha256(data).hexdigest()[:24] + ext
    prompt = fill(workflow, item, f"{UPLOAD_SUBFOLDER}/{name}", "")
    return Prepared(data, name, fingerprint(prompt))


def fill(workflow: Workflow, item: Item, image: str, prefix: str) -> dict:
    return workflow.fill(image=image, instruction=item.instruction, seed=item.seed, output_prefix=prefix,
                         negative=item.negative, width=item.width, height=item.height, max_side=item.max_side)


def _server_prefix(item: Item, prompt_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(item.output).stem)[:80] or "item"
    return f"{OUTPUT_SUBFOLDER}/{stem}-{prompt_id[:8]}"  # unique: several runs/servers never share names


def remove_stale_temps(out_dir: Path) -> int:
    """Delete result files a killed run left half-written (only this client's own temp names)."""
    count = 0
    if Path(out_dir).is_dir():
        for tmp in Path(out_dir).rglob(f".*{TEMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink()
                count += 1
    return count


class Scheduler:
    """Hands out servers: among those with a free slot (fewer than per_server of our jobs in flight) and
    not in cool-down after a failure, the least busy: prompts on its /queue that are not ours, plus ours.
    When no server answers, it probes them every ``probe`` seconds, and gives up (ServersGone) once every
    server has been unreachable for ``server_wait`` seconds."""

    def __init__(self, clients: list[ComfyClient], per_server: int, cooldown: float = 10.0,
                 server_wait: float = 300.0, probe: float = 1.0, clock=time.monotonic):
        self.clients, self.per_server, self.cooldown, self.clock = clients, per_server, cooldown, clock
        self.server_wait, self.probe = server_wait, probe
        self.inflight = {c.url: 0 for c in clients}
        self.ours = {c.url: set() for c in clients}
        self.down_until = {c.url: 0.0 for c in clients}
        self.down_since: dict[str, float | None] = {c.url: None for c in clients}
        self.last_error: dict[str, str] = {}
        self._cond = threading.Condition()

    def note(self, client: ComfyClient, error: Exception | None = None):
        """Record that the server answered (error None) or could not be reached."""
        with self._cond:
            if error is None:
                self.down_since[client.url] = None
            else:
                if self.down_since[client.url] is None:
                    self.down_since[client.url] = self.clock()
                self.last_error[client.url] = str(error)

    def another_up(self, client: ComfyClient) -> bool:
        with self._cond:
            return any(self.down_since[c.url] is None for c in self.clients if c is not client)

    def _gone(self) -> str | None:
        now = self.clock()
        if all(self.down_since[c.url] is not None and now - self.down_since[c.url] >= self.server_wait
               for c in self.clients):
            return "; ".join(f"{c.url}: {self.last_error.get(c.url, 'no answer')}" for c in self.clients)
        return None

    def acquire(self, stop: threading.Event) -> ComfyClient:
        with self._cond:
            while True:
                if stop.is_set():
                    raise Cancelled()
                free = [c for c in self.clients if self.inflight[c.url] < self.per_server]
                if not free:
                    self._cond.wait(1.0)
                    continue
                now = self.clock()
                up = [c for c in free if self.down_until[c.url] <= now] or free  # all cooling down: try anyway
                scored = []
                for rank, c in enumerate(up):
                    try:
                        load = c.queue_load(self.ours[c.url])
                    except (TransientError, ItemError) as e:
                        self.down_until[c.url] = max(self.down_until[c.url], self.clock() + self.probe)
                        if self.down_since[c.url] is None:
                            self.down_since[c.url] = self.clock()
                        self.last_error[c.url] = str(e)
                        continue
                    self.down_since[c.url] = None
                    scored.append((load + self.inflight[c.url], self.inflight[c.url], rank))
                if scored:
                    best = up[min(scored)[2]]
                    self.inflight[best.url] += 1
                    return best
                gone = self._gone()
                if gone:
                    raise ServersGone(f"not done: no ComfyUI server answered for {self.server_wait:.0f} s "
                                      f"(--server-wait): {gone}")
                self._cond.wait(self.probe)

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
    cooldown: float = 10.0       # a server that failed is not preferred for this long
    server_wait: float = 300.0   # how long an unreachable server may stay away before its work is given up
    handoff: float = 10.0        # ... or moved to another server that answers
    check_every: float = 2.0     # ask /history + /queue whether our prompt still exists, this often
    poll: float = 0.5            # interval of those checks without a websocket or while the server is away
    overwrite: bool = False      # replace files in the output folder that the batch did not make


class Runner:
    def __init__(self, clients: list[ComfyClient], workflow: Workflow, out_dir: Path, manifest: Manifest,
                 settings: Settings, progress, sleep=None, reserved=(), made=None):
        """reserved: the plan's result names (folded, relative to the manifest), which extra outputs of a
        workflow saving several images must not take; made: Manifest.made() of the run's start."""
        self.clients, self.workflow, self.out_dir, self.manifest = clients, workflow, Path(out_dir), manifest
        self.settings, self.progress, self._sleep = settings, progress, sleep
        self.scheduler = Scheduler(clients, settings.per_server, settings.cooldown, settings.server_wait)
        self.stop = threading.Event()
        self.rows: list[dict] = []
        self.reserved = set(reserved)
        self.made = made if made is not None else manifest.made()
        self._names = threading.Lock()
        self.storage_error: StorageError | None = None  # the first failed write: the run stopped there
        self._ws_warned = set()
        self._active, self._active_lock = 0, threading.Lock()

    # ------------------------------------------------------------------ the batch
    def run(self, items: list[Item]) -> list[dict]:
        work = queue.Queue()
        for item in items:
            work.put(item)
            with self._names:
                self.reserved.add(fold(self.manifest.relative(self.out_dir / item.output)))
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
                try:
                    row = self.commit(*self.process(slot, item))
                except (Cancelled, StorageError):
                    raise
                except Exception as e:  # a bug must not take the batch down with it: report it on the item
                    traceback.print_exc(file=sys.stderr)
                    row = self._row(item, None, time.monotonic(), 1, error=f"internal error: {e!r}")
                    self.manifest.append(row)
            except Cancelled:
                return
            except StorageError as e:
                self._halt(e)
                return
            self.rows.append(row)
            self.progress.finish(slot, row)

    def _halt(self, error: StorageError):
        """A result or row could not be written: queue nothing more and cancel this run's prompts on the
        servers (their results could not be kept either). Items already written stay as they are."""
        with self._names:
            if self.storage_error is not None:
                return
            self.storage_error = error
        self.stop.set()
        self.progress.write(f"stopping: {error}; cancelling this run's prompts on the servers ...")

    # ------------------------------------------------------------------ one item
    def _row(self, item: Item, prep: Prepared | None, t0: float, attempts: int, *, prompt_id=None, server=None,
             files=(), error=None) -> dict:
        outs = [self.manifest.relative(p) for p, _ in files]
        return {"input": item.input, "output": self.manifest.relative(self.out_dir / item.output),
                "instruction": item.instruction, "seed": item.seed, "seed_base": item.seed_base, "width": item.width,
                "height": item.height, "max_side": item.max_side,
                "fingerprint": prep.fingerprint if prep else None, "prompt_id": prompt_id, "server": server,
                "status": "error" if error else "ok", "attempts": attempts,
                "seconds": round(time.monotonic() - t0, 3), "outputs": outs,
                "sha256": [hashlib.sha256(data).hexdigest() for _, data in files], "error": error,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def process(self, slot: int, item: Item) -> tuple[dict, list[tuple[Path, bytes]]]:
        """-> (the item's manifest row, the files to write for it: (final path, bytes))."""
        t0 = time.monotonic()
        try:
            prep = prepare(item, self.workflow)
        except ItemError as e:
            return self._row(item, None, t0, 0, error=str(e)), []
        last, attempt = None, 0
        while attempt <= self.settings.retries:
            attempt += 1
            client, prompt_id, failed, backoff = None, None, False, True
            try:
                client = self.scheduler.acquire(self.stop)
                prompt_id = new_prompt_id()
                files = self._attempt(slot, client, item, prep, prompt_id)
                return self._row(item, prep, t0, attempt, prompt_id=prompt_id, server=client.url, files=files), files
            except ItemError as e:
                return self._row(item, prep, t0, attempt, prompt_id=prompt_id,
                                 server=client.url if client else None, error=str(e)), []
            except LostPrompt as e:  # the server is there and answering: queue it again at once
                last, backoff = e, False
                if attempt <= self.settings.retries:
                    self.progress.write(f"queueing {item.input} again: {e}")
            except TransientError as e:
                last, failed = e, client is not None
                if attempt <= self.settings.retries:
                    self.progress.write(f"retrying {item.input} (attempt {attempt} failed: {e})")
            finally:
                if client is not None:
                    self.scheduler.release(client, prompt_id, failed)
            if attempt <= self.settings.retries and backoff:
                self._wait(min(60.0, self.settings.retry_wait * 2 ** (attempt - 1)))
            elif self.stop.is_set():
                raise Cancelled()
        return self._row(item, prep, t0, attempt, error=f"gave up after {attempt} attempts: {last}"), []

    def _wait(self, seconds: float):
        if self._sleep is not None:
            self._sleep(seconds)
        elif self.stop.wait(seconds):
            raise Cancelled()
        if self.stop.is_set():
            raise Cancelled()

    # ------------------------------------------------------------------ writing the results
    def commit(self, row: dict, files: list[tuple[Path, bytes]]) -> dict:
        """Write the item's files and its row, in the order that keeps a kill harmless: every file to a
        temp name first, then the manifest row (which claims the files), then the renames. A kill before
        the row leaves only temp files (deleted by the next run); after it, a row whose file is missing
        or old (its sha256 differs), so the next run simply redoes the item. A write that fails (disk
        full, read-only) raises StorageError with no row and no temp file left: the next run redoes it."""
        temps = []
        try:
            for path, data in files:
                self._check_free(row["input"], path)
                temps.append((self._write_temp(path, data), path))
            self.manifest.append(row)
        except ItemError as e:  # a file appeared where the result goes: the item fails, the batch goes on
            self._discard(temps)
            row = {**row, "status": "error", "outputs": [], "sha256": [], "error": str(e)}
            self.manifest.append(row)
            return row
        except OSError as e:
            self._discard(temps)
            raise StorageError(e.filename or path, e) from None
        except StorageError:
            self._discard(temps)
            raise
        for tmp, path in temps:
            try:
                os.replace(tmp, path)
            except OSError as e:  # the row claims a file that is not in place: the next run redoes the item
                self._discard(temps)
                raise StorageError(path, e) from None
        return row

    @staticmethod
    def _discard(temps: list[tuple[Path, Path]]):
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)

    def _check_free(self, input_name: str, path: Path):
        """Refuse to replace a file the batch did not make (unless --overwrite)."""
        rel = self.manifest.relative(path)
        if path.is_dir():
            raise ItemError(f"the result of {input_name} would go to {rel}, which is a folder")
        if self.settings.overwrite or not (path.exists() or path.is_symlink()):
            return
        if not Manifest.made_here(self.made, rel, path):
            raise ItemError(f"the result of {input_name} would replace {rel}, which deepgen-batch did not make "
                            "(or which was changed since); move it away or pass --overwrite")

    @staticmethod
    def _write_temp(path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def _paths(self, item: Item, saved: list[dict]) -> list[Path]:
        """Where each saved image goes: the first to the planned name; further ones (a workflow with
        several SaveImage nodes) to <name>_2, _3 ..., or with a hash if another item's name is that."""
        primary = self.out_dir / item.output
        paths = []
        for k, image in enumerate(saved):
            ext = Path(image["filename"]).suffix.lower() or ".png"
            if k == 0:
                paths.append(primary.with_suffix(ext))
                continue
            tag = hashlib.sha256(f"{item.input}#{item.output}#{k}".encode()).hexdigest()[:8]
            with self._names:
                for name in (f"{primary.stem}_{k + 1}{ext}", f"{primary.stem}_{k + 1}_{tag}{ext}"):
                    key = fold(self.manifest.relative(primary.with_name(name)))
                    if key not in self.reserved or name.endswith(f"_{tag}{ext}"):
                        self.reserved.add(key)
                        paths.append(primary.with_name(name))
                        break
        return paths

    # ------------------------------------------------------------------ one attempt on one server
    def _attempt(self, slot: int, client: ComfyClient, item: Item, prep: Prepared,
                 prompt_id: str) -> list[tuple[Path, bytes]]:
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
        except BaseException as e:
            if queued and not isinstance(e, LostPrompt):  # do not leave work behind on a server we gave up on
                client.cancel(prompt_id)
            raise
        finally:
            if ws is not None:
                ws.close()
        if (entry.get("status") or {}).get("status_str") != "success":
            error = execution_error(entry)
            if error is not None and str(error.get("node_id")) == self.workflow.targets["image"][0][0]:
                raise ItemError(f"{item.input} is not a readable image: the server could not decode it "
                                f"({error.get('exception_type', '')}: "
                                f"{str(error.get('exception_message', '')).strip()[:200]})")
            raise ItemError(describe_failure(entry))
        saved = output_images(entry)
        if not saved:
            raise ItemError("the prompt finished without saving an image (missing output: the workflow needs "
                            "a SaveImage node)")
        return [(path, client.view(info)) for path, info in zip(self._paths(item, saved), saved)]

    def _open_ws(self, client: ComfyClient, client_id: str):
        try:
            return client.open_ws(client_id)
        except TransientError as e:
            if client.url not in self._ws_warned:
                self._ws_warned.add(client.url)
                self.progress.write(f"no websocket on {client.url} ({e}); following jobs by polling /history")
            return None

    @staticmethod
    def _locate(client: ComfyClient, prompt_id: str):
        """-> the prompt's /history entry once it ended, "queued" while it waits or runs, None if the server
        no longer has it. /queue is read between two /history reads: a prompt leaves the queue only into
        the history (one lock on the server), so "in neither" means lost, never "just finished"."""
        entry = client.history(prompt_id, timeout=10)
        if entry:
            return entry
        if prompt_id in client.queue_ids(timeout=10):
            return "queued"
        return client.history(prompt_id, timeout=10) or None

    def _follow(self, slot: int, client: ComfyClient, ws, prompt_id: str) -> dict:
        """Wait for the prompt to end. Websocket events drive the progress bar and say when to look; the
        truth comes from /history + /queue, read every check_every seconds, at once after an end or a
        queue-change event, and every poll seconds without a websocket. A server that cannot be reached
        is waited for (server_wait, or handoff when another server answers); one that answers without
        the prompt has lost it (restart, cleared queue): LostPrompt, so it is queued again."""
        s = self.settings
        deadline = time.monotonic() + s.timeout
        next_check, down_since, ended = time.monotonic() + (s.poll if ws is None else s.check_every), None, False
        while True:
            if self.stop.is_set():
                raise Cancelled()
            now = time.monotonic()
            if now > deadline:
                raise ItemError(f"no result after {s.timeout:.0f} s (--timeout); prompt cancelled")
            if now < next_check:
                if ws is None:
                    time.sleep(min(next_check - now, s.poll))
                    continue
                try:
                    kind, payload = ws.recv(timeout=min(next_check - now, 1.0))
                except socket.timeout:
                    continue
                except OSError:  # the server went away, or a proxy dropped the socket: look now
                    ws.close()
                    ws, next_check = None, 0.0
                    continue
                event = self._event(slot, prompt_id, payload) if kind == TEXT else None
                if event in DONE_EVENTS:
                    ended, next_check = True, 0.0
                elif event == "status":  # the queue changed (a prompt queued, ended, deleted, cleared)
                    next_check = min(next_check, time.monotonic() + 0.2)
                continue
            try:
                state = self._locate(client, prompt_id)
            except TransientError as e:
                self.scheduler.note(client, e)
                down_since = down_since or time.monotonic()
                away = time.monotonic() - down_since
                if away > (s.handoff if self.scheduler.another_up(client) else s.server_wait):
                    raise TransientError(f"{client.url} unusable for {away:.0f} s: {e}") from None
                next_check = time.monotonic() + s.poll
                continue
            if down_since is not None:
                self.scheduler.note(client)
                down_since = None
            if state is None:
                raise LostPrompt(f"{client.url} no longer has the prompt (the server restarted, or its queue "
                                 "was cleared)")
            if isinstance(state, dict):
                return state
            next_check = time.monotonic() + (0.1 if ended else s.poll if ws is None else s.check_every)

    def _event(self, slot: int, prompt_id: str, payload: bytes) -> str | None:
        """-> the event's type if it concerns our prompt (or is a queue "status"), else None."""
        try:
            msg = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(msg, dict):
            return None
        if msg.get("type") == "status":
            return "status"
        data = msg.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
            return None
        if msg.get("type") == "progress":
            self.progress.step(slot, data.get("value"), data.get("max"))
        return msg.get("type")
