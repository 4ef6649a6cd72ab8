"""Pick the fastest engine for one model by measuring it, not by assuming."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class TorchSession:
    """The torch engine (``to_torch_engine``) behind the same call convention as OrtSession.

    Args:
        qmodel: a quantized model.
        compile: use ``torch.compile``.
    """

    backend = "torch"

    def __init__(self, qmodel: nn.Module, compile: bool = True) -> None:
        from quantbalance.deploy.torch_engine import to_torch_engine

        self.module = to_torch_engine(qmodel, compile=compile)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the model (a single dict argument is used as keyword inputs)."""
        with torch.inference_mode():
            if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
                out = self.module(**args[0])
            else:
                out = self.module(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out


def median_ms(run: Callable[[Any], Any], batch: Any, repeats: int = 5) -> float:
    """Median wall time of ``run(batch)`` after two warm-up calls.

    Args:
        run: a session.
        batch: one input batch.
        repeats: timed calls.

    Returns:
        Milliseconds.
    """
    run(batch)
    run(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fastest(
    candidates: dict[str, Callable[[], Callable[[Any], Any]]], batch: Any, repeats: int = 5
) -> tuple[str, Callable[[Any], Any], dict[str, float]]:
    """Build each candidate engine, time it on ``batch``, keep the fastest.

    Args:
        candidates: engine name -> zero-argument builder.
        batch: the batch to time (use the deployment's real shape).
        repeats: timed calls per engine.

    Returns:
        ``(name, session, {name: median ms})``.
    """
    timings: dict[str, float] = {}
    sessions: dict[str, Callable[[Any], Any]] = {}
    for name, build in candidates.items():
        sessions[name] = build()
        timings[name] = median_ms(sessions[name], batch, repeats)
    best = min(timings, key=timings.__getitem__)
    log.info("engine timings (ms): %s -> %s", timings, best)
    return best, sessions[best], timings
