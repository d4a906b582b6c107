"""Progress lines with rate and ETA for long jobs (split_bin.py, synthetic_data.py, the Criteo
converter's passes and shuffle)."""

import sys
import time


class Progress:
    """Prints `PREFIX: done/total UNIT (pct%) rate UNIT/s ETA s` at most every `seconds`,
    and always at the end. total and done are in the same unit (bytes, samples, ...);
    `scale` and `unit` only shape the printed numbers. stream None: silent."""

    def __init__(self, prefix, total, unit="GB", scale=1e9, seconds=10.0, stream=sys.stderr):
        self.prefix, self.total, self.unit, self.scale = prefix, total, unit, scale
        self.seconds, self.stream = seconds, stream
        self.start = self._last = time.monotonic()

    def update(self, done):
        """Reports `done` if `seconds` have passed since the last line, or done == total."""
        now = time.monotonic()
        if self.stream is None or (now - self._last < self.seconds and done < self.total):
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        self.stream.write(
            f"{self.prefix}: {done / self.scale:.2f}/{self.total / self.scale:.2f} {self.unit} "
            f"({100.0 * done / max(self.total, 1):.1f}%) {rate / self.scale:.2f} {self.unit}/s "
            f"ETA {eta:.0f} s\n")
        self.stream.flush()
