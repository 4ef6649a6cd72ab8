"""qb.quantize: apply a Plan to a copy of a model (or, with ``inplace=True``, to the model).

Steps: copy -> fold BatchNorm -> resolve the Plan -> algorithm steps (quantized weights) ->
swap modules -> calibrate static activation ranges. The user's model is not modified unless
``inplace=True``.

Memory: while no later step needs float weights (the ``gptq`` and ``rtn`` steps), each layer's
quantized module is installed as soon as its weight is final, so its float weight is freed then
(see ``QuantContext.release``); with ``inplace=True`` nothing is copied, and the peak stays
near the float model plus one transformer block's calibration work.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms import ALGORITHMS, NEEDS_DATA, QuantContext, parse_algorithm
from quantbalance.algorithms.smoothquant import lower_smoothing
from quantbalance.args import checked
from quantbalance.calibration import check_calib_data, run_batches
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.formats import (
    PerChannel,
    PerTensor,
    PerToken,
    QuantizedTensor,
    Scheme,
    check_finite,
)
from quantbalance.nn import REGISTRY, ActQuantizer, QuantModule
from quantbalance.plan import LayerSpec, Plan, preset
from quantbalance.transform import (
    fold_batchnorm,
    quantizable_layers,
    replace_module,
    unsupported_layers,
)

log = logging.getLogger(__name__)

#: Steps that never read a quantized layer's float weight again: layers they finish are
#: installed at once while every later step is one of these too.
EAGER_STEPS = frozenset({"gptq", "rtn"})


@dataclass
class QuantizationInfo:
    """What ``quantize`` did; attached to the result as ``qmodel.qb_info``.

    Attributes:
        plan: the Plan applied.
        layers: quantized layer name -> spec label.
        kept_float: quantizable layers the Plan left in float.
        unsupported: layers with parameters that have no quantized module (kept in float).
        folded: ``(conv, bn)`` pairs folded before quantization.
        algorithm_log: facts reported by algorithm steps.
    """

    plan: Plan
    layers: dict[str, str] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)
    algorithm_log: dict[str, Any] = field(default_factory=dict)


def as_plan(plan: Plan | str | dict[str, Any] | None) -> Plan:
    """Accept a Plan, a preset name, a Plan dict or a path to a JSON/YAML Plan.

    Args:
        plan: the plan in any accepted form.

    Returns:
        A Plan.
    """
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan(**plan)
    if isinstance(plan, str):
        if plan.endswith((".json", ".yaml", ".yml")):
            return Plan.load(plan)
        return preset(plan)
    raise ConfigError(
        f"plan must be a Plan, a preset name, a dict or a .json/.yaml path; got {plan!r}"
    )


def plan_from_bitwidths(model: nn.Module, bitwidths: list[int]) -> Plan:
    """The seeds' shorthand: one weight bit width per quantizable layer, in module order.

    Args:
        model: the model.
        bitwidths: one integer (1..8) per quantizable layer.

    Returns:
        A Plan of exact layer names with per-channel symmetric weight schemes.
    """
    layers = quantizable_layers(model)
    if len(bitwidths) != len(layers):
        listing = ", ".join(f"{n} ({t})" for n, t in layers.items())
        raise ConfigError(
            f"bitwidths has {len(bitwidths)} entries but the model has {len(layers)} "
            f"quantizable layers: {listing}"
        )
    specs: dict[str, LayerSpec | None] = {}
    for (name, type_name), bits in zip(layers.items(), bitwidths, strict=True):
        specs[name] = LayerSpec(weight=Scheme(int(bits), granularity=PerChannel(axis=0)))
        log.info("layer %s (%s): %d-bit weights", name, type_name, bits)
    return Plan(name="bitwidths", layers=specs)


@checked
def quantize(
    model: nn.Module,
    plan: Plan | str | dict[str, Any] | None = None,
    calib_data: Iterable[Any] | None = None,
    algorithm: str | None = None,
    bitwidths: list[int] | None = None,
    progress: bool = True,
    inplace: bool = False,
    check_numerics: bool | float = False,
) -> nn.Module:
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
        check_numerics: run float and quantized model on ``calib_data`` and raise
            ``NumericsError`` naming every layer whose output has NaN/inf or an SQNR below
            0 dB (a number: that floor in dB); see ``evaluate.guards``.

    Returns:
        The quantized model (simulated), with ``qb_plan`` and ``qb_info`` attributes.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> q = quantize(net, bitwidths=[8, 4], progress=False)
        >>> sorted(q.qb_info.layers)
        ['0', '2']
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if check_numerics is not False and (inplace or calib_data is None):
        raise ConfigError("check_numerics compares with the float model on calib_data: give "
                          "calib_data, and inplace=False")  # fmt: skip
    if bitwidths is not None:
        if plan is not None:
            raise ConfigError("give either plan or bitwidths, not both")
        the_plan = plan_from_bitwidths(model, bitwidths)
    else:
        the_plan = as_plan(plan if plan is not None else "int8-weight")
    if algorithm is not None:
        parse_algorithm(algorithm)
        layers = {
            k: v and v.model_copy(update={"algorithm": algorithm})
            for k, v in the_plan.layers.items()
        }
        the_plan = the_plan.model_copy(update={"layers": layers})

    qmodel = (model if inplace else copy.deepcopy(model)).eval()
    folded = fold_batchnorm(qmodel)
    candidates = quantizable_layers(qmodel)
    specs = the_plan.resolve(candidates)
    for name in specs:
        mod = qmodel.get_submodule(name)
        check_finite(mod.weight.detach(), f"layer {name!r} weight")
        if not mod.weight.is_floating_point():
            raise UnsupportedError(f"layer {name!r}: weight dtype {mod.weight.dtype} is not float")
    steps = sorted({s for spec in specs.values() for s in parse_algorithm(spec.algorithm)})
    needs_data = any(s.activation is not None and s.act_mode == "static" for s in specs.values())
    data_steps = [s for s in steps if s in NEEDS_DATA]
    batches = None
    if calib_data is not None:
        batches = check_calib_data(calib_data)
    elif needs_data or data_steps:
        why = "static activation ranges" if needs_data else f"algorithm(s) {', '.join(data_steps)}"
        raise CalibrationError(f"plan {the_plan.name!r} needs calibration data for {why}")

    for name, spec in specs.items():
        if spec.weight is None:
            raise UnsupportedError(
                f"layer {name!r}: activation-only specs (weight=None) are not supported; "
                "give a weight scheme"
            )
    ctx = QuantContext(qmodel, specs, batches, progress=progress)
    installed: set[str] = set()

    def install(name: str) -> None:
        _install(qmodel, name, specs[name], ctx.qweights[name])
        installed.add(name)

    order = [*_ordered_steps(specs), "rtn"]
    for i, step in enumerate(order):
        ctx.install = install if EAGER_STEPS.issuperset(order[i:]) else None
        ALGORITHMS[step](ctx)
    ctx.install = None

    info = QuantizationInfo(plan=the_plan, folded=folded, algorithm_log=ctx.log)
    for name, spec in specs.items():
        if name not in installed:
            install(name)
        info.layers[name] = spec.label
        log.info("layer %s: %s", name, spec.label)
    info.kept_float = [n for n in candidates if n not in specs]
    if lowered := lower_smoothing(qmodel):
        info.algorithm_log.setdefault("smoothquant", {})["lowered"] = lowered
    info.unsupported = unsupported_layers(qmodel)

    quantizers = {n: m for n, m in qmodel.named_modules() if isinstance(m, ActQuantizer)}
    if any(q.mode == "static" for q in quantizers.values()):
        assert batches is not None
        run_batches(qmodel, batches, desc="calibrating activations", progress=progress)
        for n, q in quantizers.items():
            q.freeze(n)
    qmodel.qb_plan = the_plan
    qmodel.qb_info = info
    if check_numerics is not False:
        from quantbalance.evaluate.guards import SQNR_FLOOR_DB
        from quantbalance.evaluate.guards import check_numerics as check

        floor = SQNR_FLOOR_DB if isinstance(check_numerics, bool) else check_numerics
        check(model, qmodel, batches or [], floor)
    return qmodel


def _install(model: nn.Module, name: str, spec: LayerSpec, qweight: QuantizedTensor) -> None:
    """Replace the float layer ``name`` by its quantized module (and input quantizer)."""
    mod = model.get_submodule(name)
    act = None
    if spec.activation is not None and not isinstance(mod, nn.Embedding):
        act = ActQuantizer(spec.activation, spec.act_mode, spec.act_observer)
    replace_module(model, name, REGISTRY[type(mod)].from_float(mod, qweight, act))


def _ordered_steps(specs: dict[str, LayerSpec]) -> list[str]:
    order: list[str] = []
    for spec in specs.values():
        for s in parse_algorithm(spec.algorithm):
            if s not in order and s != "rtn":
                order.append(s)
    return order


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
