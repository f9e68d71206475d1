"""The manifest: one JSON line per finished item, appended, and the record of which files the batch made.

Fields: input, output (the item's result file, decided in the plan: also on error rows), instruction, seed,
seed_base (the --seed the seed was derived under; null: the mapping gave it), width, height, max_side,
fingerprint, prompt_id, server, status ("ok" | "error"), attempts, seconds, outputs (the files written),
sha256 (of each of them), error, finished (UTC ISO time).
Paths are relative to the manifest's folder. An item is the pair (input, output); its LAST row counts.

A file in the output folder "was made by the batch" when an ok row lists its path with its current
sha256: only such files may be replaced (see cli.check_overwrites). Each line is written with one
O_APPEND write and fsync'd; a line cut short by a kill (power loss) is dropped on the next start, so the
file stays valid JSONL. A write that fails (disk full, read-only) is cut back off at once and raises
StorageError; the manifest then takes no further rows in this run.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from .plan import fold

ANY = "*"  # made() for rows without sha256
FIELDS = ("input", "output", "instruction", "seed", "seed_base", "width", "height", "max_side", "fingerprint",
          "prompt_id", "server", "status", "attempts", "seconds", "outputs", "sha256", "error", "finished")
PROBE_SUFFIX = ".deepgen-part"  # = runner.TEMP_SUFFIX: a probe left by a kill is deleted like any temp file


class StorageError(Exception):
    """A result or manifest row could not be written (disk full, read-only folder, no permission): the run
    stops queueing; what is written stays."""

    def __init__(self, path, error: OSError):
        reason = error.strerror or str(error) or errno.errorcode.get(error.errno, "error")
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.error = path, error


def writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and write, fsync and delete a small file there; StorageError if not possible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".deepgen-batch-probe.", suffix=PROBE_SUFFIX)
    except OSError as e:
        raise StorageError(folder, e) from None
    try:
        os.write(fd, b"deepgen-batch write check\n")
        os.fsync(fd)
    except OSError as e:
        raise StorageError(folder, e) from None
    finally:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)


def sha256_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
                else hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class Manifest:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.root = self.path.parent
        self._lock = threading.Lock()
        self.failed: StorageError | None = None

    def check_writable(self) -> None:
        """Before anything is queued: the manifest's folder takes new files (repair's temp file) and the
        manifest itself opens for appending. StorageError naming the path otherwise."""
        writable_folder(self.root)
        existed = self.path.exists()
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as e:
            raise StorageError(self.path, e) from None
        if not existed:
            self.path.unlink(missing_ok=True)

    def rows(self) -> list[dict]:
        return self._read()[0]

    def _read(self) -> tuple[list[dict], list[int], bool]:
        """-> (rows, numbers of unreadable lines, whether the file ends cleanly with a newline)"""
        if not self.path.exists():
            return [], [], True
        rows, bad = [], []
        text = self.path.read_bytes().decode("utf-8", "replace")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(n)
        return rows, bad, not text or text.endswith("\n")

    def repair(self, log=None) -> int:
        """Drop lines a kill cut short (or that are not JSON objects): rewrite the file without them
        (temp file + rename). -> how many were dropped. Their items have no row, so they run again."""
        rows, bad, clean = self._read()
        if not bad and clean:
            return 0
        if bad:  # (a last line that is whole but lacks its newline is kept; the next append needs the newline)
            (log or (lambda t: print(t, file=sys.stderr)))(
                f"deepgen-batch: {self.path}: dropping {len(bad)} unreadable line(s) ({', '.join(map(str, bad[:5]))}"
                f"{' ...' if len(bad) > 5 else ''}), left by an interrupted write; those items run again")
        tmp = self.path.with_name(f".{self.path.name}.repair")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(self.path, e) from None
        return len(bad)

    def latest(self) -> dict[tuple[str, str], dict]:
        """(input, output) -> the item's last row."""
        return {(r.get("input"), r.get("output")): r for r in self.rows()}

    def owners(self) -> dict[str, str]:
        """folded output name (relative to the manifest's folder) -> the input it was given to."""
        return {fold(r["output"]): r.get("input") for r in self.rows() if isinstance(r.get("output"), str)}

    def made(self) -> dict[str, set[str]]:
        """folded path (relative to the manifest's folder) -> sha256 of every version the batch wrote there."""
        out: dict[str, set[str]] = {}
        for r in self.rows():
            if r.get("status") == "ok":
                outputs = r.get("outputs") or []
                # rows of deepgen-batch 0.1 have no hashes: their files count as made, whatever they hold
                for path, digest in zip(outputs, r.get("sha256") or [ANY] * len(outputs)):
                    out.setdefault(fold(path), set()).add(digest)
        return out

    @staticmethod
    def made_here(made: dict[str, set[str]], rel: str, path: Path) -> bool:
        """Is the file at path (rel: relative to the manifest's folder) one the batch wrote?"""
        digests = made.get(fold(rel), ())
        return ANY in digests or sha256_file(path) in digests

    @staticmethod
    def is_done(row: dict | None, root: Path) -> bool:
        """The item is finished: its row is ok and every file it lists is there, unchanged. (Whether it was
        made with today's settings is ``changed``: a finished item is only redone when asked.)"""
        if not row or row.get("status") != "ok" or not row.get("outputs"):
            return False
        digests = row.get("sha256") or [None] * len(row["outputs"])
        return all(sha256_file(root / p) == d if d else (root / p).is_file() for p, d in zip(row["outputs"], digests))

    @staticmethod
    def changed(row: dict, fingerprint: str | None) -> bool:
        """The finished item's row was made from another instruction, seed, image or settings than today's."""
        return row.get("fingerprint") != fingerprint

    def append(self, row: dict):
        """One line, one write(2) on an O_APPEND descriptor, then fsync: a kill leaves it whole or absent.
        A failed write is cut off again (ftruncate to the old end) and raises StorageError; after that no
        row is appended in this run, so nothing is ever glued to a torn line."""
        data = (json.dumps({k: row.get(k) for k in FIELDS}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self.failed is not None:
                raise self.failed
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as e:
                self.failed = StorageError(self.path, e)
                raise self.failed from None
            try:
                end = os.fstat(fd).st_size
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                self.failed = StorageError(self.path, e)
                try:
                    os.ftruncate(fd, end)
                except OSError:
                    pass  # a torn last line is dropped by repair() at the next start
                raise self.failed from None
            finally:
                os.close(fd)

    def relative(self, path: Path) -> str:
        try:
            return Path(os.path.relpath(path, self.root)).as_posix()
        except ValueError:  # another drive on Windows
            return str(path)
