"""Timing engines side by side: every engine once per batch size in each round, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from quantbalance.progress import steps

Clock = Callable[[], float]


def time_interleaved(
    runs: Mapping[str, Callable[[Any], Any]],
    batches: Mapping[int, Any],
    rounds: int,
    clock: Clock = time.perf_counter,
) -> dict[str, dict[int, float]]:
    """Median milliseconds per call, timing every engine once per batch size in each round.

    Args:
        runs: engine name -> ``run(batch)``.
        batches: batch size -> batch.
        rounds: number of rounds.
        clock: seconds timer.

    Returns:
        Engine name -> batch size -> median ms.
    """
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in runs}
    with torch.inference_mode():
        for _ in steps(range(rounds), "bench: timed rounds"):
            for name, run in runs.items():
                for b, batch in batches.items():
                    t0 = clock()
                    run(batch)
                    times[name][b].append((clock() - t0) * 1e3)
    return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in times.items()}
