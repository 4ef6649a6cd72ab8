"""Pick the fastest engine for one model by measuring it, not by assuming.

An engine is only a candidate if it computes the simulated model: its output on the example
batch must reach a cosine similarity of ``min_cosine`` (default 0.999) to the simulation's.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from quantbalance.deploy.torch_engine import to_torch_engine
from quantbalance.errors import UnsupportedError

log = logging.getLogger(__name__)


class TorchSession:
    """The torch engine (``to_torch_engine``) behind the same call convention as OrtSession.

    Args:
        qmodel: a quantized model.
        compile: use ``torch.compile``.
        **options: passed to ``to_torch_engine`` (``dtype``, ``inexact``, ``hardware``).
    """

    backend = "torch"

    def __init__(self, qmodel: nn.Module, compile: bool = True, **options: Any) -> None:
        self.module = to_torch_engine(qmodel, compile=compile, **options)
        self.kernels = dict(self.module.qb_engine_kernels)
        self.fallbacks = dict(self.module.qb_engine_fallbacks)

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


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two outputs (tensors, arrays, or their first element / ``[0]``).

    Args:
        a: one output.
        b: the other.

    Returns:
        The cosine of the flattened float64 values (1.0 when both are all zero).
    """
    x, y = (_first_tensor(v).flatten().double() for v in (a, b))
    if x.shape != y.shape:
        return float("nan")
    den = float(x.norm() * y.norm())
    return 1.0 if den == 0 else float(x @ y) / den


def _first_tensor(v: Any) -> torch.Tensor:
    if isinstance(v, Mapping):
        v = next(iter(v.values()))
    elif isinstance(v, tuple | list):
        v = v[0]
    elif not isinstance(v, torch.Tensor) and hasattr(v, "to_tuple"):
        v = v.to_tuple()[0]
    return torch.as_tensor(v).detach().float()


def fastest(
    candidates: dict[str, Callable[[], Callable[[Any], Any]]],
    batch: Any,
    repeats: int = 5,
    reference: Any = None,
    min_cosine: float = 0.999,
) -> tuple[str, Callable[[Any], Any], dict[str, float], dict[str, str]]:
    """Build each candidate engine, check its output, time it on ``batch``, keep the fastest.

    Args:
        candidates: engine name -> zero-argument builder.
        batch: the batch to check and time (use the deployment's real shape).
        repeats: timed calls per engine.
        reference: the simulated model's output on ``batch`` (None: no parity check).
        min_cosine: an engine whose output is below this cosine to ``reference`` is never
            picked.

    Returns:
        ``(name, session, {name: median ms}, {rejected name: reason})``.
    """
    timings: dict[str, float] = {}
    sessions: dict[str, Callable[[Any], Any]] = {}
    rejected: dict[str, str] = {}
    for name, build in candidates.items():
        run = build()
        if reference is not None:
            with torch.inference_mode():
                c = cosine(reference, run(batch))
            if not c >= min_cosine:
                rejected[name] = f"output cosine {c:.6f} to the simulation < {min_cosine}"
                log.warning("engine %s not picked: %s", name, rejected[name])
                continue
        sessions[name] = run
        timings[name] = median_ms(run, batch, repeats)
    if not timings:
        raise UnsupportedError(
            "no engine computes the simulated model on this machine: "
            + "; ".join(f"{n}: {r}" for n, r in rejected.items())
        )
    best = min(timings, key=timings.__getitem__)
    log.info("engine timings (ms): %s -> %s (rejected: %s)", timings, best, rejected or "none")
    return best, sessions[best], timings, rejected
