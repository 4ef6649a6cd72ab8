"""Progress of long work: a bar on a terminal, one log line per phase elsewhere.

On a terminal (stderr is a TTY) :func:`steps` shows a ``tqdm`` bar: phase, step k of n, elapsed
and estimated time left. Elsewhere (logs, CI, pipes) it logs one line when the phase starts, one
every :data:`EVERY_S` seconds with step k of n, elapsed and estimated time left, and one when it
ends, instead of hundreds of carriage-return updates. :func:`phase` announces the numbered phases
of long work (the search's sensitivity, costs, verification, front, held-out check).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("quantbalance.progress")
log.setLevel(logging.INFO)  # phase lines pass even when the application logs only warnings

#: Off a terminal, a phase logs its progress at most this often (seconds).
EVERY_S = 30.0


def steps(
    items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Iterate ``items`` showing the progress of the phase ``desc``.

    Args:
        items: the steps.
        desc: the phase's name.
        total: number of steps (default ``len(items)`` when it has one).
        enabled: False: no bar and no log lines.

    Yields:
        The items.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, leave=False)
        return
    t0 = last = time.perf_counter()
    log.info("%s: %s steps ...", desc, "?" if total is None else total)
    n = 0
    for n, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= EVERY_S and (total is None or n < total):
            last = now
            left = f", ~{(now - t0) / n * (total - n):.0f} s left" if total else ""
            log.info("%s: %d of %s steps, %.0f s elapsed%s", desc, n, total or "?", now - t0, left)
    log.info("%s: %d steps done in %.1f s", desc, n, time.perf_counter() - t0)


def phase(what: str, k: int, n: int, name: str, elapsed: float) -> None:
    """Announce phase ``k`` of ``n`` of long work (one log line, terminal or not).

    Args:
        what: the work (``search``).
        k: this phase's number (from 1).
        n: the number of phases.
        name: the phase.
        elapsed: seconds since the work started.
    """
    log.info("%s: phase %d of %d, %s (%.0f s elapsed)", what, k, n, name, elapsed)
