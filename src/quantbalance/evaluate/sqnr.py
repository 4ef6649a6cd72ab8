"""Signal-to-quantization-noise ratio and per-layer output comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quantbalance.args import checked
from quantbalance.calibration import capture
from quantbalance.errors import ConfigError


@checked
def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """SQNR in dB: ``10·log10(Σ ref² / Σ (ref - approx)²)`` over finite entries.

    Args:
        reference: the float tensor.
        approx: its approximation.

    Returns:
        dB (``inf`` when identical).
    """
    if reference.shape != approx.shape:
        raise ConfigError(
            f"sqnr: reference has shape {tuple(reference.shape)} and approx "
            f"{tuple(approx.shape)}; give two tensors of the same shape"
        )
    r = reference.detach().double()
    a = approx.detach().double()
    ok = torch.isfinite(r) & torch.isfinite(a)
    noise = float((r[ok] - a[ok]).pow(2).sum())
    signal = float(r[ok].pow(2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-300) / noise)


def first_tensor(out: Any) -> torch.Tensor | None:
    """A layer's output tensor: itself, or the first element of a tuple/list output.

    Args:
        out: what a module returned.

    Returns:
        The tensor, or None when there is none.
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def layer_output_sqnr(
    float_model: nn.Module,
    qmodel: nn.Module,
    names: Sequence[str],
    batches: Sequence[Any],
    progress: bool = False,
) -> dict[str, float]:
    """SQNR of each named layer's output, quantized model against float, on the same batches.

    Each model runs end to end, so errors accumulate as they do in use.

    Args:
        float_model: the float model.
        qmodel: the quantized model (same layer names).
        names: layer names to compare.
        batches: input batches.
        progress: show progress bars.

    Returns:
        name -> SQNR in dB (computed over all batches).
    """
    outs: dict[str, dict[str, list[torch.Tensor]]] = {"f": {}, "q": {}}

    def grab(which: str):
        def fn(name: str, mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
            t = first_tensor(out)
            if t is not None:
                outs[which].setdefault(name, []).append(t.detach().float().cpu())

        return fn

    capture(float_model, {n: float_model.get_submodule(n) for n in names}, batches, grab("f"),
            desc="float outputs", progress=progress)  # fmt: skip
    capture(qmodel, {n: qmodel.get_submodule(n) for n in names}, batches, grab("q"),
            desc="quantized outputs", progress=progress)  # fmt: skip
    result = {}
    for n in names:
        if n in outs["f"] and n in outs["q"]:
            f = torch.cat([t.reshape(-1) for t in outs["f"][n]])
            q = torch.cat([t.reshape(-1) for t in outs["q"][n]])
            result[n] = sqnr(f, q)
    return result
