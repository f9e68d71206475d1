"""A disk that fills up or is read-only, for the batch client's write paths (test-only).

``faulty_disk(folder, mode, after)`` patches the os-level calls the client writes with (os.open, os.write,
os.fsync, os.mkdir, os.replace; open() in write mode) so that, for files under ``folder`` only:

  mode "full-result"  the (after+1)-th result file's fsync fails with ENOSPC (the data of a finished
                      prompt cannot be kept), and from then on the disk is full;
  mode "full-row"     the (after+1)-th manifest row is cut short (half of it written, then ENOSPC), as a
                      full disk does, and from then on the disk is full;
  mode "read-only"    nothing can be created or written there (EROFS) from the start.

"Full" means: every write and fsync under the folder fails with ENOSPC, file creation still works (inodes
left), deleting and truncating work, as on a real full file system. Everything outside ``folder`` is
untouched (sockets and the terminal never go through these functions).

Run the client under it: ``python tests/disk_faults.py FOLDER MODE AFTER -- <deepgen-batch arguments>``.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import os
import sys
from pathlib import Path
from unittest import mock

TEMP_SUFFIX = ".deepgen-part"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Disk:
    def __init__(self, folder, mode: str, after: int):
        assert mode in ("full-result", "full-row", "read-only"), mode
        self.folder = os.path.realpath(folder)
        self.mode, self.after = mode, after
        self.full = False
        self.results = self.rows = 0
        self.torn: set[int] = set()  # descriptors whose short write was given: the next write fails
        self.real = {name: getattr(os, name) for name in ("open", "write", "fsync", "mkdir", "replace")}
        self.real_open = builtins.open

    def under(self, path) -> bool:
        try:
            path = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return path == self.folder or path.startswith(self.folder + os.sep)

    def fd_path(self, fd: int) -> str | None:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None

    def error(self, code: int, path) -> OSError:
        return OSError(code, os.strerror(code), os.fspath(path))

    # ------------------------------------------------------------------ the patched calls
    def open(self, path, flags, mode=0o777, *args, **kwargs):
        if self.mode == "read-only" and flags & WRITE_FLAGS and self.under(path):
            raise self.error(errno.EROFS, path)
        return self.real["open"](path, flags, mode, *args, **kwargs)

    def mkdir(self, path, mode=0o777, *args, **kwargs):
        if self.mode == "read-only" and self.under(path):
            raise self.error(errno.EEXIST if os.path.isdir(path) else errno.EROFS, path)
        return self.real["mkdir"](path, mode, *args, **kwargs)

    def replace(self, src, dst, *args, **kwargs):
        if self.mode == "read-only" and self.under(dst):
            raise self.error(errno.EROFS, dst)
        return self.real["replace"](src, dst, *args, **kwargs)

    def write(self, fd, data):
        path = self.fd_path(fd)
        if path and self.under(path):
            if path.endswith(".jsonl") and self.mode == "full-row" and fd not in self.torn:
                self.rows += 1
                self.full = self.full or self.rows > self.after
            if self.full:
                if fd in self.torn or len(data) < 2:
                    self.torn.discard(fd)
                    raise self.error(errno.ENOSPC, path)
                self.torn.add(fd)  # what a full disk does: a short write first, the next one fails
                return self.real["write"](fd, bytes(data)[:len(data) // 2])
        return self.real["write"](fd, data)

    def fsync(self, fd):
        path = self.fd_path(fd)
        if path and self.under(path):
            if path.endswith(TEMP_SUFFIX) and "-probe." not in path and self.mode == "full-result":
                self.results += 1
                self.full = self.full or self.results > self.after
            if self.full:
                raise self.error(errno.ENOSPC, path)
        return self.real["fsync"](fd)

    def builtin_open(self, file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and self.under(file):
            if self.mode == "read-only":
                raise self.error(errno.EROFS, file)
            if self.full:
                raise self.error(errno.ENOSPC, file)
        return self.real_open(file, mode, *args, **kwargs)


@contextlib.contextmanager
def faulty_disk(folder, mode: str, after: int = 0):
    disk = _Disk(folder, mode, after)
    with contextlib.ExitStack() as stack:
        for name in ("open", "write", "fsync", "mkdir", "replace"):
            stack.enter_context(mock.patch.object(os, name, getattr(disk, name)))
        stack.enter_context(mock.patch.object(builtins, "open", disk.builtin_open))
        yield disk


def main(argv: list[str]) -> int:
    folder, mode, after, sep, *args = argv
    assert sep == "--", "usage: disk_faults.py FOLDER MODE AFTER -- <deepgen-batch arguments>"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from deepgen_batch import cli

    with faulty_disk(folder, mode, int(after)):
        return cli.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
