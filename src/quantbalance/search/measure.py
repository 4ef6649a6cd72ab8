"""One single-layer sensitivity measurement, as a function of shared state and one item.

``qb.sensitivity`` maps :func:`measure_layer` over (layer, candidate) pairs with an executor
(``search.executor``): in this process, or on Ray workers that each hold :class:`Measure` once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from torch import nn

from quantbalance.hardware import Int8Target
from quantbalance.lowering import lower_spec, plan_target
from quantbalance.plan import LayerSpec, Plan
from quantbalance.quantize import quantize
from quantbalance.search.evaluator import Source
from quantbalance.search.proxies import build_qmodule, proxies
from quantbalance.transform import replace_module


@dataclass
class Measure:
    """What single-layer measurements need: sent once to each worker of an executor.

    Attributes:
        model: the float model.
        base: its BatchNorm-folded copy (layers are swapped in and back out).
        src: the data source and eval function.
        stats: per-layer calibration statistics (proxies).
        q: per-layer quantization inputs (``search.proxies.calibrate``).
        fast: layer -> key -> whether the candidate is plain round to nearest (swap a module).
        target: the int8 target the layers are quantized for (``Plan.hardware``; None: the
            measuring process's ``lowering.plan_target()``).
    """

    model: nn.Module
    base: nn.Module
    src: Source
    stats: dict[str, Any]
    q: dict[str, Any]
    fast: dict[str, dict[str, bool]]
    target: Int8Target | None = None


def measure_layer(
    job: Measure, item: tuple[str, str, LayerSpec, bool, bool]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Quantize layer ``n`` alone as ``k``; its proxies and/or its measured metrics.

    Args:
        job: the shared state (``base`` gets the layer swapped in and back out).
        item: ``(layer, key, spec, want_proxy, evaluate)``.

    Returns:
        ``(proxies or None, {"metrics", "seconds"} or None)``.
    """
    n, k, s, want_proxy, evaluate = item
    t0 = time.perf_counter()
    fast = job.fast[n][k]
    target = job.target or plan_target()
    if fast:
        mod = job.base.get_submodule(n)
        # as qb.quantize lowers it for the target (7-bit weights under int8 inputs on avx2)
        low = lower_spec(s, type(mod).__name__, target)
        qmod = build_qmodule(job.base, n, low if low is not None else s, job.q)
        target = job.base
        replace_module(job.base, n, qmod)
    else:
        plan = Plan(layers={n: s}, name=f"{n}:{k}", hardware=target)
        target = quantize(job.model, plan, job.src.calib_data, progress=False)
        mod, qmod = job.base.get_submodule(n), target.get_submodule(n)
    try:
        p = proxies(mod, qmod, job.stats[n]) if want_proxy else None
        value = None
        if evaluate:
            metrics = job.src.evaluate(target, f"eval function (layer {n!r} as {k})")
            value = {"metrics": metrics, "seconds": time.perf_counter() - t0}
        return p, value
    finally:
        if fast:
            replace_module(job.base, n, mod)
