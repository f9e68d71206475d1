"""The manifest: one JSON line per finished item (append-only, so a killed run loses nothing written).

Fields: input, instruction, seed, width, height, max_side, fingerprint, prompt_id, server, status ("ok" |
"error"), attempts, seconds, output (first result), outputs (all), error, finished (UTC ISO time).
Output paths are relative to the manifest's folder. For resume, the LAST row of an (input, fingerprint)
pair counts: done means status "ok" and every output file still exists.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

FIELDS = ("input", "instruction", "seed", "width", "height", "max_side", "fingerprint", "prompt_id", "server",
          "status", "attempts", "seconds", "output", "outputs", "error", "finished")


class Manifest:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.root = self.path.parent
        self._lock = threading.Lock()

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a crash: that item simply is not done
                print(f"deepgen-batch: ignoring unreadable manifest line {self.path}:{n}", file=sys.stderr)
        return rows

    def done(self) -> dict[tuple[str, str], dict]:
        """(input, fingerprint) -> the ok row whose outputs all exist."""
        last = {}
        for row in self.rows():
            last[(row.get("input"), row.get("fingerprint"))] = row
        return {key: row for key, row in last.items()
                if row.get("status") == "ok" and row.get("outputs")
                and all((self.root / p).is_file() for p in row["outputs"])}

    def append(self, row: dict):
        line = json.dumps({k: row.get(k) for k in FIELDS}, ensure_ascii=False)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())

    def relative(self, path: Path) -> str:
        try:
            return Path(os.path.relpath(path, self.root)).as_posix()
        except ValueError:  # another drive on Windows
            return str(path)
