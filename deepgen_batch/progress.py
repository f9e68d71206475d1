"""Progress display: an overall bar plus one sampler-step bar per in-flight job (tqdm), or plain lines
when tqdm is not installed or --no-progress is given. Thread-safe; workers report, it prints."""
from __future__ import annotations

import sys
import threading
from urllib.parse import urlsplit


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    def __init__(self, total: int, slots: int, bars: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.count, self.ok, self.failed = total, 0, 0, 0
        self._lock = threading.Lock()
        tqdm = _tqdm() if bars else None
        self._tqdm = tqdm
        self._overall = tqdm(total=total, desc="batch", unit="img", position=0, dynamic_ncols=True,
                             file=self.stream) if tqdm else None
        self._slots = [None] * slots

    def write(self, text: str):
        with self._lock:
            if self._tqdm:
                self._tqdm.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def start(self, slot: int, name: str, server: str):
        if not self._tqdm:
            return
        with self._lock:
            if self._slots[slot] is not None:
                self._slots[slot].close()
            self._slots[slot] = self._tqdm(total=1, desc=f"  {name} @ {urlsplit(server).netloc}", unit="step",
                                           position=slot + 1, leave=False, dynamic_ncols=True, file=self.stream)

    def step(self, slot: int, value, maximum):
        bar = self._slots[slot] if self._tqdm else None
        if bar is None or not isinstance(value, int) or not isinstance(maximum, int) or maximum <= 0:
            return
        with self._lock:
            if bar.total != maximum:  # first step event: start the clock now, not at upload time
                bar.reset(total=maximum)
            bar.n = min(value, maximum)
            bar.refresh()

    def finish(self, slot: int, row: dict):
        with self._lock:
            self.count += 1
            if row["status"] == "ok":
                self.ok += 1
            else:
                self.failed += 1
            if self._overall is not None:
                self._overall.update(1)
                self._overall.set_postfix(ok=self.ok, failed=self.failed, refresh=True)
        if row["status"] != "ok":
            self.write(f"FAILED {row['input']}: {row['error']}")
        elif not self._tqdm:
            self.write(f"[{self.count}/{self.total}] ok {row['input']} -> {row['output']} "
                       f"({row['seconds']:.1f} s, {row['server']})")

    def close(self):
        with self._lock:
            for bar in self._slots:
                if bar is not None:
                    bar.close()
            if self._overall is not None:
                self._overall.close()
