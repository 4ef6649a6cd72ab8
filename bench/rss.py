"""Resident-memory helpers shared by the benchmark scripts (Linux ``/proc``)."""

from __future__ import annotations

import os
import threading


def rss_mb() -> float:
    """The process's resident set size now, in MiB.

    Returns:
        MiB.
    """
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples the process RSS in a thread while in a ``with`` block; ``peak`` is the largest.

    Args:
        every_s: sampling period in seconds.
    """

    def __init__(self, every_s: float = 0.02) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
