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
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms import ALGORITHMS, NEEDS_DATA, QuantContext, parse_algorithm
from quantbalance.algorithms.smoothquant import lower_smoothing
from quantbalance.args import checked
from quantbalance.calibration import check_calib_data, run_batches
from quantbalance.calibration.batch import move_batch
from quantbalance.calibration.device import computing_on, qtensor_to, resolve_device
from quantbalance.errors import CalibrationError, ConfigError, FloatLayerError, UnsupportedError
from quantbalance.formats import (
    PerChannel,
    PerTensor,
    PerToken,
    QuantizedTensor,
    Scheme,
    check_finite,
)
from quantbalance.lowering import for_hardware
from quantbalance.nn import REGISTRY, ActQuantizer, QuantModule, quantized_type
from quantbalance.plan import LayerSpec, Plan, preset
from quantbalance.transform import (
    Coverage,
    coverage,
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
        unsupported: layers with parameters that have no quantized module (kept in float;
            norms included).
        folded: ``(conv, bn)`` pairs folded before quantization.
        algorithm_log: facts reported by algorithm steps.
        coverage: every weight layer: quantized, float by plan, or unsupported (with why).
    """

    plan: Plan
    layers: dict[str, str] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)
    algorithm_log: dict[str, Any] = field(default_factory=dict)
    coverage: Coverage = field(default_factory=Coverage)

    @property
    def summary(self) -> str:
        """``"quantized N of M weight layers (P % of weights)"``."""
        return self.coverage.summary()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the Plan (checkpoints store the Plan apart)."""
        return {
            "layers": self.layers,
            "kept_float": self.kept_float,
            "unsupported": self.unsupported,
            "folded": [list(p) for p in self.folded],
            "algorithm_log": self.algorithm_log,
            "coverage": self.coverage.to_dict(),
        }

    @classmethod
    def from_dict(cls, plan: Plan, d: dict[str, Any]) -> QuantizationInfo:
        """Rebuild from :meth:`to_dict` and the Plan.

        Args:
            plan: the Plan applied.
            d: the dict.

        Returns:
            The info.
        """
        return cls(
            plan=plan,
            layers=d.get("layers", {}),
            kept_float=d.get("kept_float", []),
            unsupported=d.get("unsupported", {}),
            folded=[tuple(p) for p in d.get("folded", [])],
            algorithm_log=d.get("algorithm_log", {}),
            coverage=Coverage.from_dict(d.get("coverage", {})),
        )


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
            result is written block by block to ``save_to`` (see ``frontends.offload``).
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
    if bitwidths is not None:
        if plan is not None:
            raise ConfigError("give either plan or bitwidths, not both")
        the_plan = plan_from_bitwidths(model, bitwidths)
    else:
        the_plan = as_plan(plan if plan is not None else "int8-weight")
    the_plan = _with_algorithm(the_plan, algorithm)
    the_plan = for_hardware(the_plan, hardware)

    qmodel = (model if inplace else copy.deepcopy(model)).eval()
    folded = fold_batchnorm(qmodel)
    candidates = quantizable_layers(qmodel)
    specs = the_plan.resolve(candidates)
    _check_coverage(coverage(qmodel, specs), strict)
    _say_lowered(the_plan, specs, candidates)
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
    with _computing_on(ctx, device):  # the calibrating steps; rounding runs where weights are
        for i, step in enumerate(order[:-1]):
            ctx.install = install if EAGER_STEPS.issuperset(order[i:]) else None
            ALGORITHMS[step](ctx)
    ctx.install = install
    ALGORITHMS["rtn"](ctx)
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
    info.coverage = _announce(coverage(qmodel))

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


def _check_coverage(planned: Coverage, strict: bool) -> None:
    """Refuse, under ``strict``, weight layers that would stay float without the Plan saying so."""
    if strict and planned.unsupported:
        listing = "; ".join(f"{n} ({why})" for n, why in planned.reasons.items())
        raise FloatLayerError(
            f"strict: {len(planned.unsupported)} weight layer(s) would be left float: {listing}. "
            "Skip them in the Plan (skip=[...]) to keep them float on purpose, or quantize "
            "without strict=True"
        )


def _announce(cov: Coverage) -> Coverage:
    """Log what stays float: a WARNING for layers without a quantized form, INFO by plan."""
    if cov.unsupported:
        log.warning(
            "%s; %d weight layer(s) left float with no quantized form (%.1f %% of weights): %s",
            cov.summary(), len(cov.unsupported), _pct(cov, cov.unsupported),
            "; ".join(f"{n}: {why}" for n, why in cov.reasons.items()),
        )  # fmt: skip
    if cov.by_plan:
        log.info(
            "%s; %d weight layer(s) float by plan (%.1f %% of weights): %s",
            cov.summary(), len(cov.by_plan), _pct(cov, cov.by_plan), ", ".join(cov.by_plan),
        )  # fmt: skip
    return cov


def _pct(cov: Coverage, part: dict[str, int]) -> float:
    total = sum(cov.quantized.values()) + sum(cov.by_plan.values()) + sum(cov.unsupported.values())
    return 100.0 * sum(part.values()) / max(total, 1)


@contextmanager
def _computing_on(ctx: QuantContext, device: str | torch.device | None) -> Iterator[None]:
    """Run the steps inside on ``device``, one block there at a time (None: where it is)."""
    if device is None:
        yield
        return
    dev = resolve_device(device)
    home = next((p.device for p in ctx.model.parameters()), torch.device("cpu"))
    batches = ctx.calib_data
    with computing_on(ctx.model, dev) as hooks:
        ctx.blocks, ctx.calib_data = hooks, move_batch(batches, dev)
        try:
            yield
        finally:
            ctx.blocks, ctx.calib_data = None, batches
    ctx.qweights.update({n: qtensor_to(q, home) for n, q in ctx.qweights.items()})


def _with_algorithm(plan: Plan, algorithm: str | None) -> Plan:
    if algorithm is None:
        return plan
    parse_algorithm(algorithm)
    layers = {
        k: v and v.model_copy(update={"algorithm": algorithm}) for k, v in plan.layers.items()
    }
    return plan.model_copy(update={"layers": layers})


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
    """``quantize`` of a Hugging Face checkpoint folder, block by block (``frontends.offload``)."""
    from quantbalance.frontends.offload import quantize_offloaded  # the frontend above us

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
    return quantize_offloaded(path, the_plan, calib_data, save_to=save_to, offload=offload,
                              device=device, progress=progress)  # fmt: skip


_LOWERED_SAID: set[bool] = set()  # warn once per process, then log at INFO


def _say_lowered(plan: Plan, specs: dict[str, LayerSpec], types: dict[str, str]) -> None:
    """Warn when ``hardware='avx2'`` narrowed some layers' weights (a different model)."""
    raw = plan.model_copy(update={"hardware": None})
    n = sum(1 for name, spec in specs.items() if raw.spec_for(name, types[name])[0] != spec)
    if n:
        level = logging.INFO if _LOWERED_SAID else logging.WARNING
        _LOWERED_SAID.add(True)
        log.log(
            level,
            "plan %r for hardware=%r: %d layer(s) with int8 activations get 7-bit weights (codes "
            "within ±64), which int8 kernels without VNNI compute exactly; pass "
            "hardware='vnni' to keep full-range int8 for a VNNI/AMX target",
            plan.name, plan.hardware, n,
        )  # fmt: skip


def _install(model: nn.Module, name: str, spec: LayerSpec, qweight: QuantizedTensor) -> None:
    """Replace the float layer ``name`` by its quantized module (and input quantizer)."""
    mod = model.get_submodule(name)
    act = None
    if spec.activation is not None and not isinstance(mod, nn.Embedding):
        act = ActQuantizer(spec.activation, spec.act_mode, spec.act_observer)
    qtype = quantized_type(mod)
    assert qtype is not None, name
    replace_module(model, name, qtype.from_float(mod, qweight, act))


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
