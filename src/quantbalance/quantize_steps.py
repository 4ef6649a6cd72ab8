"""The phases of ``qb.quantize``: normalise the Plan -> resolve layers -> run the algorithm
steps -> record what happened -> calibrate activations; and :class:`QuantizationInfo`.

Memory: while no later step needs float weights (the ``gptq`` and ``rtn`` steps), each layer's
quantized module is installed as soon as its weight is final, so its float weight is freed then
(see ``QuantContext.release``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms import ALGORITHMS, NEEDS_DATA, QuantContext, parse_algorithm
from quantbalance.calibration import check_calib_data, run_batches
from quantbalance.calibration.batch import move_batch
from quantbalance.calibration.device import computing_on, qtensor_to, resolve_device
from quantbalance.errors import CalibrationError, ConfigError, FloatLayerError, UnsupportedError
from quantbalance.formats import PerChannel, QuantizedTensor, Scheme, check_finite
from quantbalance.lowering import for_hardware
from quantbalance.nn import ActQuantizer, quantized_type
from quantbalance.plan import LayerSpec, Plan, preset
from quantbalance.transform import Coverage, coverage, quantizable_layers, replace_module

log = logging.getLogger("quantbalance.quantize")  # qb.quantize's logger, as before the split

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
        attention: ``nn.MultiheadAttention`` modules computed from linear layers
            (``transform.split_attention``) so that their projections are quantized.
        algorithm_log: facts reported by algorithm steps.
        coverage: every weight layer: quantized, float by plan, or unsupported (with why).
    """

    plan: Plan
    layers: dict[str, str] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
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
            "attention": self.attention,
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
            attention=list(d.get("attention", [])),
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


def normalise_plan(
    model: nn.Module,
    plan: Plan | str | dict[str, Any] | None,
    bitwidths: list[int] | None,
    algorithm: str | None,
    hardware: str | None,
) -> Plan:
    """The Plan ``quantize`` applies: from a Plan/preset/dict or bit widths, algorithm and target.

    Args:
        model: the float model (bit widths name its layers in order).
        plan: a Plan, preset name, dict or None (``int8-weight``).
        bitwidths: one weight bit width per quantizable layer, instead of ``plan``.
        algorithm: algorithm steps for every layer, or None (the Plan's own).
        hardware: the int8 target (``auto``, ``vnni``, ``avx2`` or None).

    Returns:
        The Plan.

    Raises:
        ConfigError: both ``plan`` and ``bitwidths`` given.
    """
    if bitwidths is not None:
        if plan is not None:
            raise ConfigError("give either plan or bitwidths, not both")
        the_plan = plan_from_bitwidths(model, bitwidths)
    else:
        the_plan = as_plan(plan if plan is not None else "int8-weight")
    the_plan = _with_algorithm(the_plan, algorithm)
    return for_hardware(the_plan, hardware)


def resolve_layers(
    qmodel: nn.Module, the_plan: Plan, strict: bool, calib_data: Iterable[Any] | None
) -> tuple[dict[str, LayerSpec], dict[str, str], list[Any] | None]:
    """Each quantized layer's spec, checked: finite float weights, data where steps need it.

    Args:
        qmodel: the (folded) model being quantized.
        the_plan: the Plan.
        strict: refuse weight layers that would stay float without the Plan saying so.
        calib_data: calibration batches, or None.

    Returns:
        ``(layer -> spec, quantizable layer -> type name, checked batches or None)``.

    Raises:
        CalibrationError: the Plan needs data and none was given.
        UnsupportedError: a non-float weight or an activation-only spec.
    """
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
    return specs, candidates, batches


def run_steps(
    qmodel: nn.Module,
    specs: dict[str, LayerSpec],
    batches: list[Any] | None,
    progress: bool,
    device: str | torch.device | None,
) -> tuple[QuantContext, Callable[[str], None], set[str]]:
    """Run the Plan's algorithm steps, then round the rest (``rtn``), installing layers early.

    Args:
        qmodel: the model being quantized (modified: finished layers are swapped in).
        specs: each layer's spec.
        batches: calibration batches, or None.
        progress: progress bars.
        device: where the calibrating steps compute (None: where the model is).

    Returns:
        ``(context with every quantized weight and the steps' log, install function, the
        layers installed so far)``.
    """
    ctx = QuantContext(qmodel, specs, batches, progress=progress)
    installed: set[str] = set()

    def install(name: str) -> None:
        install_layer(qmodel, name, specs[name], ctx.qweights[name])
        installed.add(name)

    order = [*_ordered_steps(specs), "rtn"]
    with _computing_on(ctx, device):  # the calibrating steps; rounding runs where weights are
        for i, step in enumerate(order[:-1]):
            ctx.install = install if EAGER_STEPS.issuperset(order[i:]) else None
            ALGORITHMS[step](ctx)
    ctx.install = install
    ALGORITHMS["rtn"](ctx)
    ctx.install = None
    return ctx, install, installed


def calibrate_activations(qmodel: nn.Module, batches: list[Any] | None, progress: bool) -> None:
    """Run the calibration batches through the model and freeze every static input quantizer.

    Args:
        qmodel: the quantized model.
        batches: the calibration batches (needed when a quantizer is static).
        progress: progress bars.
    """
    quantizers = {n: m for n, m in qmodel.named_modules() if isinstance(m, ActQuantizer)}
    if any(q.mode == "static" for q in quantizers.values()):
        assert batches is not None
        run_batches(qmodel, batches, desc="calibrating activations", progress=progress)
        for n, q in quantizers.items():
            q.freeze(n)


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


def install_layer(model: nn.Module, name: str, spec: LayerSpec, qweight: QuantizedTensor) -> None:
    """Replace the float layer ``name`` by its quantized module (and input quantizer).

    Args:
        model: the model being quantized (changed in place).
        name: the layer's qualified name.
        spec: its LayerSpec (the activation scheme, if any, gets an input quantizer).
        qweight: its quantized weight.
    """
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
