"""Empirical bias correction (Nagel et al. 2019, section 4.2; Finkelstein et al. 2019).

Quantized weights shift the mean of a layer's output: ``E[Ŵ x̂] ≠ E[W x]``. The correction adds
that shift back into the bias, per output channel:

    ``b ← b + E[W x + b] - E[Ŵ x̂ + b]``

with the expectations taken over the calibration data, ``x`` from the float model and ``x̂`` from
the model whose layers carry their quantized weights (and earlier corrections). Layers are
corrected in model order, so each correction also absorbs the mean error that earlier layers pass
down. It must run after the weights are chosen: layers still without a quantized weight get
round to nearest first (``cle+adaround+bias_correction``). Activation quantization is not
simulated (its rounding error is close to zero-mean).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms.adaround import dequantized_weights
from quantbalance.algorithms.base import QuantContext, register_algorithm
from quantbalance.algorithms.rtn import rtn
from quantbalance.calibration import capture
from quantbalance.formats import QuantizedTensor
from quantbalance.nn import plain_forward

log = logging.getLogger(__name__)


def output_means(
    model: nn.Module, names: list[str], batches: list[Any], progress: bool = False
) -> dict[str, torch.Tensor]:
    """Per-output-channel mean of each named layer's output over the batches.

    Args:
        model: the model to run.
        names: layer names (Linear: channels last; convolutions: channels on dim 1).
        batches: calibration batches.
        progress: show a progress bar.

    Returns:
        name -> (out_channels,) float32 means (layers never reached are absent).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def acc(name: str, mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        y = out.detach().float()
        y = y.reshape(-1, y.shape[-1]) if isinstance(mod, nn.Linear) else y.movedim(1, -1)
        y = y.reshape(-1, y.shape[-1])
        sums[name] = sums.get(name, 0) + y.sum(0)
        counts[name] = counts.get(name, 0) + y.shape[0]

    mods = {n: model.get_submodule(n) for n in names}
    capture(model, mods, batches, acc, desc="bias correction", progress=progress)
    return {n: sums[n] / counts[n] for n in sums}


@torch.no_grad()
def correct_biases(
    model: nn.Module,
    qweights: dict[str, QuantizedTensor],
    names: list[str],
    batches: list[Any],
    progress: bool = False,
) -> dict[str, float]:
    """Correct the biases of ``names`` in place, in order (see the module docstring).

    Args:
        model: the float model (its biases are changed; a missing bias is created).
        qweights: quantized weights of every quantized layer.
        names: layers to correct, in model order (each must be in ``qweights``).
        batches: calibration batches.
        progress: show progress bars.

    Returns:
        name -> largest absolute correction applied.
    """
    float_means = output_means(model, names, batches, progress)
    applied = {}
    for name in names:
        if name not in float_means:
            log.warning("bias_correction: %s saw no calibration data; not corrected", name)
            continue
        with dequantized_weights(model, qweights):
            q_mean = output_means(model, [name], batches, progress)[name]
        delta = float_means[name] - q_mean
        mod = model.get_submodule(name)
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros_like(delta).to(mod.weight.dtype))
        mod.bias.add_(delta.to(mod.bias.dtype))
        applied[name] = float(delta.abs().max())
        log.info("bias_correction %s: max |Δb| %.3g", name, applied[name])
    return applied


@register_algorithm("bias_correction", needs_data=True)
def bias_correction(ctx: QuantContext) -> None:
    """Plan step ``bias_correction``: correct every layer whose spec names it.

    Layers without a quantized weight yet are first rounded to nearest, so put this step last.

    Args:
        ctx: the quantization context (biases of its float model are corrected in place).
    """
    data = ctx.require_data("bias_correction")
    rtn(ctx)
    names = [
        n
        for n, m in ctx.layers_for("bias_correction").items()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) and plain_forward(m)
    ]
    applied = correct_biases(ctx.model, ctx.qweights, names, data, ctx.progress)
    ctx.log["bias_correction"] = {"max_abs_delta": applied}
