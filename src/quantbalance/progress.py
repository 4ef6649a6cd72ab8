"""Progress of long work: a bar on a terminal, one log line per phase elsewhere.

On a terminal (stderr is a TTY) :func:`steps` shows a ``tqdm`` bar: phase, step k of n, elapsed
and estimated time left. Elsewhere (logs, CI, pipes) it logs one line when the phase starts and
one when it ends, with its duration, instead of hundreds of carriage-return updates.
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
    t0 = time.perf_counter()
    log.info("%s: %s steps ...", desc, "?" if total is None else total)
    n = 0
    for n, item in enumerate(items, 1):  # noqa: B007 - n is the count after the loop
        yield item
    log.info("%s: %d steps done in %.1f s", desc, n, time.perf_counter() - t0)
