"""qb.quantize: apply a Plan to a copy of a model (or, with ``inplace=True``, to the model).

Steps (``quantize_steps``): normalise the Plan -> copy -> fold BatchNorm -> resolve the layers ->
algorithm steps (quantized weights, modules swapped) -> calibrate static activation ranges.
The user's model is not modified unless ``inplace=True``.

Memory: while no later step needs float weights (the ``gptq`` and ``rtn`` steps), each layer's
quantized module is installed as soon as its weight is final, so its float weight is freed then
(see ``QuantContext.release``); with ``inplace=True`` nothing is copied, and the peak stays
near the float model plus one transformer block's calibration work.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms.smoothquant import lower_smoothing
from quantbalance.args import checked
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.evaluate.guards import SQNR_FLOOR_DB
from quantbalance.evaluate.guards import check_numerics as check
from quantbalance.formats import PerChannel, PerTensor, PerToken, Scheme
from quantbalance.nn import REGISTRY, QuantModule
from quantbalance.plan import LayerSpec, Plan
from quantbalance.quantize_offload import quantize_offloaded
from quantbalance.quantize_steps import (
    EAGER_STEPS,
    QuantizationInfo,
    _announce,
    _with_algorithm,
    as_plan,
    calibrate_activations,
    install_layer,
    normalise_plan,
    plan_from_bitwidths,
    resolve_layers,
    run_steps,
)
from quantbalance.transform import (
    coverage,
    fold_batchnorm,
    quantize_residual_adds,
    split_attention,
    unsupported_layers,
)

__all__ = [
    "EAGER_STEPS",
    "QuantizationInfo",
    "as_plan",
    "install_layer",
    "is_quantized",
    "plan_from_bitwidths",
    "quantize",
    "quantize_dynamic",
]

log = logging.getLogger(__name__)


@checked
def quantize(
    model: nn.Module | str | os.PathLike[str],
    plan: Plan | str | dict[str, Any] | None = None,
    calib_data: Iterable[Any] | None = None,
    algorithm: str | None = None,
    bitwidths: list[int] | None = None,
    progress: bool = True,
    inplace: bool = False,
    strict: bool = False,
    hardware: str | None = "auto",
    check_numerics: bool | float = False,
    *,
    offload: str | None = None,
    save_to: str | Path | None = None,
    device: str | torch.device | None = None,
) -> nn.Module | Path:
    """Return a quantized copy of ``model`` (``model`` itself is not modified unless ``inplace``).

    Args:
        model: a float ``nn.Module``.
        plan: a Plan, a preset name (``w8a8``, ``int8-weight``, ...), a dict or a plan file.
        calib_data: batches (Tensor / tuple / dict) for static activations and algorithms.
        algorithm: overrides every spec's algorithm (e.g. ``"rtn"``, ``"gptq"``).
        bitwidths: shorthand, one weight bit width per quantizable layer (instead of ``plan``).
        progress: show progress bars.
        inplace: quantize ``model`` itself instead of a deep copy, which saves one copy of the
            float model (for large models). The float model is given up: its layers are
            replaced (and its BatchNorms folded) in place, and the returned model is ``model``.
        strict: raise :class:`~quantbalance.errors.FloatLayerError` (before any work) if a weight
            layer (a module owning a weight parameter of 2+ dimensions: Linear/Conv/Embedding
            and look-alikes; norms excluded) would be left float *unintentionally*, i.e. it has
            no quantized form. Layers the Plan skips (``skip`` patterns, None specs, types
            outside ``layer_types``) are float by plan and never raise. Without ``strict``,
            such layers are announced by a WARNING and in ``qb_info.coverage``.
        offload: with ``model`` a Hugging Face checkpoint folder: ``"disk"`` loads each
            transformer block from the safetensors shards only while it is quantized (memory:
            one block, not the model), ``"cpu"`` reads all weights into host memory once; the
            result is written block by block to ``save_to`` (see ``quantize_offload``).
        save_to: the output checkpoint folder for ``offload`` (read it with ``qb.load``).
        device: where calibration, GPTQ and AWQ run (``"cuda"``, ``"cpu"``; default: where the
            model is; with ``offload``: ``cuda`` when available). Blocks move to the device one
            at a time and back to where they were afterwards.
        check_numerics: run float and quantized model on ``calib_data`` and raise
            ``NumericsError`` naming every layer whose output has NaN/inf or an SQNR below
            0 dB (a number: that floor in dB); see ``evaluate.guards``.

    Returns:
        The quantized model (simulated), with ``qb_plan`` and ``qb_info`` attributes
        (``qb_info.summary``: "quantized N of M weight layers (P % of weights)"); with
        ``offload``, the checkpoint folder written.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> q = quantize(net, bitwidths=[8, 4], progress=False)
        >>> sorted(q.qb_info.layers)
        ['0', '2']
    """
    if isinstance(model, str | os.PathLike):
        return _quantize_path(model, plan, calib_data, algorithm, offload, save_to, device,
                              progress, bitwidths)  # fmt: skip
    if offload is not None or save_to is not None:
        raise ConfigError(
            "offload= and save_to= apply to a Hugging Face checkpoint folder given as model "
            f"(a path); got a {type(model).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise UnsupportedError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if check_numerics is not False and (inplace or calib_data is None):
        raise ConfigError("check_numerics compares with the float model on calib_data: give "
                          "calib_data, and inplace=False")  # fmt: skip
    the_plan = normalise_plan(model, plan, bitwidths, algorithm, hardware)

    qmodel = (model if inplace else copy.deepcopy(model)).eval()
    folded = fold_batchnorm(qmodel)
    attention = split_attention(qmodel)
    specs, candidates, batches = resolve_layers(qmodel, the_plan, strict, calib_data)
    ctx, install, installed = run_steps(qmodel, specs, batches, progress, device)

    info = QuantizationInfo(plan=the_plan, folded=folded, attention=attention,
                            algorithm_log=ctx.log)  # fmt: skip
    for name, spec in specs.items():
        if name not in installed:
            install(name)
        info.layers[name] = spec.label
        log.info("layer %s: %s", name, spec.label)
    info.kept_float = [n for n in candidates if n not in specs]
    if lowered := lower_smoothing(qmodel):
        info.algorithm_log.setdefault("smoothquant", {})["lowered"] = lowered
    info.unsupported = unsupported_layers(qmodel)
    info.coverage = _announce(coverage(qmodel))
    if the_plan.residual_activation is not None:
        if batches is None:
            raise CalibrationError(f"plan {the_plan.name!r} needs calibration data for the "
                                   "static ranges of residual_activation")  # fmt: skip
        adds = quantize_residual_adds(qmodel, the_plan.residual_activation)
        log.info("%d residual addition(s) quantized: %s", len(adds), ", ".join(adds))

    calibrate_activations(qmodel, batches, progress)
    qmodel.qb_plan = the_plan
    qmodel.qb_info = info
    if check_numerics is not False:
        floor = SQNR_FLOOR_DB if isinstance(check_numerics, bool) else check_numerics
        check(model, qmodel, batches or [], floor)
    return qmodel


def _quantize_path(
    path: str | os.PathLike[str],
    plan: Plan | str | dict[str, Any] | None,
    calib_data: Iterable[Any] | None,
    algorithm: str | None,
    offload: str | None,
    save_to: str | Path | None,
    device: str | torch.device | None,
    progress: bool,
    bitwidths: list[int] | None,
) -> Path:
    """``quantize`` of a Hugging Face checkpoint folder, block by block (``quantize_offload``)."""

    if offload is None and save_to is None:
        raise UnsupportedError(
            f"model must be a torch.nn.Module, got the path {str(path)!r}; to quantize a Hugging "
            "Face checkpoint folder block by block pass offload='disk' (or 'cpu') and save_to="
        )
    if offload is None or save_to is None or bitwidths is not None:
        raise ConfigError(
            f"model={str(path)!r} is a path: quantizing a checkpoint folder needs "
            "offload='disk' or 'cpu' and save_to=<output folder> (and a plan, not bitwidths)"
        )
    the_plan = _with_algorithm(as_plan(plan if plan is not None else "int8-weight"), algorithm)
    if the_plan.residual_activation is not None:
        raise UnsupportedError(
            "residual_activation is not supported block by block (offload=); quantize the "
            "loaded model, or drop residual_activation from the Plan"
        )
    return quantize_offloaded(path, the_plan, calib_data, save_to=save_to, offload=offload,
                              device=device, progress=progress)  # fmt: skip


@checked
def quantize_dynamic(
    model: nn.Module, layer_types: set[type[nn.Module]] | None = None, dtype: Any = "int8"
) -> nn.Module:
    """The seeds' ``quantize_dynamic`` shorthand: int8 weights + dynamic int8 activations.

    Args:
        model: the float model.
        layer_types: module classes to quantize (default ``{nn.Linear}``).
        dtype: ``"int8"`` (or ``torch.qint8``).

    Returns:
        The quantized copy (Linear inputs per token, convolution inputs per tensor).
    """
    if dtype not in ("int8", torch.qint8, torch.int8):
        raise ConfigError(f"dtype={dtype!r}: quantize_dynamic supports 'int8'")
    types = layer_types or {nn.Linear}
    unsupported = [t.__name__ for t in types if t not in REGISTRY]
    if unsupported:
        raise UnsupportedError(
            f"layer types {unsupported} have no quantized module; supported: "
            f"{', '.join(t.__name__ for t in REGISTRY)}"
        )
    w = Scheme(8, granularity=PerChannel(axis=0))
    specs: dict[str, LayerSpec | None] = {}
    for name, mod in model.named_modules():
        if type(mod) in types and type(mod) is not nn.Embedding:
            gran = PerToken() if isinstance(mod, nn.Linear) else PerTensor()
            act = Scheme(8, symmetric=False, granularity=gran)
            specs[name] = LayerSpec(weight=w, activation=act, act_mode="dynamic")
        elif type(mod) in types:
            specs[name] = LayerSpec(weight=w)
    return quantize(model, Plan(name="dynamic-int8", layers=specs), progress=False)


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` contains quantized layers.

    Args:
        module: any module.

    Returns:
        True if a QuantModule is inside.
    """
    return any(isinstance(m, QuantModule) for m in module.modules())
