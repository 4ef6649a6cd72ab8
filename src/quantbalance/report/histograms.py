"""Weight and input-activation histograms of a model's layers, for the report."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from quantbalance.analysis import analyze


def _hist(x: torch.Tensor) -> dict[str, list[float]]:
    v = x.detach().float().reshape(-1)
    v = v[torch.isfinite(v)].numpy()
    if v.size > 1 << 20:
        v = v[np.random.default_rng(0).choice(v.size, 1 << 20, replace=False)]
    counts, edges = np.histogram(v, bins=80)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def histograms(model: nn.Module, calib_data: Any, layers: list[str]) -> dict[str, dict[str, Any]]:
    """Weight and input-activation histograms of ``layers`` (activations via ``qb.analyze``).

    Args:
        model: the float model.
        calib_data: calibration batches (the first two are used), or None.
        layers: layer names.

    Returns:
        layer -> ``{"weight": {...}, "activation": {...} or None}``.
    """
    samples = {}
    if calib_data:
        a = analyze(model, list(calib_data)[:2], weight_schemes=(), act_schemes=(), progress=False)
        samples = a.samples
    out = {}
    for n in layers:
        mod = model.get_submodule(n)
        act = samples.get(n)
        out[n] = {"weight": _hist(mod.weight), "activation": None if act is None else _hist(act)}
    return out
