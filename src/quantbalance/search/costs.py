"""Costs of each layer under each spec: exact bytes and *measured* latency.

Bytes are exact: the ``QuantizedTensor.nbytes`` that quantizing the weight would store, computed
from its shape by ``formats.kinds.stored_nbytes`` (no quantization run; tested equal for every
kind), plus the activation quantizer's scale and zero point. Latency comes
from a pluggable :class:`LatencyModel`; the default, ``search.latency.TorchLatencyModel``, times
each layer's deployed-form torch kernel on this machine. A plan's predicted latency is the
measured rest of the model plus the sum of its layers' kernels.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from quantbalance.calibration import capture
from quantbalance.calibration.batch import call_model
from quantbalance.evaluate import model_nbytes
from quantbalance.formats.kinds import stored_nbytes
from quantbalance.lowering import lower_spec, plan_target
from quantbalance.nn import weight_matrix
from quantbalance.plan import LayerSpec, Plan
from quantbalance.progress import steps
from quantbalance.search.cache import data_hash, machine_id
from quantbalance.search.latency_calibration import calibrate
from quantbalance.transform import quantizable_layers

log = logging.getLogger(__name__)

ACT_QUANTIZER_BYTES = 8  # ActQuantizer's persistent scale (fp32) and zero point (int32)


@runtime_checkable
class LatencyModel(Protocol):
    """Anything that can say how long one layer takes under one spec, in milliseconds.

    An engine (e.g. ONNX Runtime in ``deploy/``) plugs in by implementing ``latency_ms``;
    ``name`` identifies it in caches and reports. Optional methods:
    ``latency_many(items) -> list[float]`` (items as ``latency_ms`` arguments) lets an engine
    time many layers at once, interleaved; ``model_latency_ms(model, example_inputs) -> float``
    times the whole float model on the engine (default: torch eager, :func:`time_model`), from
    which the time outside the quantizable layers is derived.
    """

    name: str

    def latency_ms(
        self,
        layer_name: str,
        module: nn.Module,
        spec: LayerSpec | None,
        example_input_shape: tuple[int, ...],
    ) -> float:
        """Milliseconds of ``module`` under ``spec`` on an input of ``example_input_shape``.

        An engine that subclasses this protocol and has ``latency_many`` inherits this method:
        the layer timed as a batch of one.
        """
        many = getattr(self, "latency_many", None)
        if many is None:
            raise NotImplementedError(f"{type(self).__name__} has neither method")
        return float(many([(layer_name, module, spec, example_input_shape)])[0])


def layer_nbytes(module: nn.Module, spec: LayerSpec | None) -> int:
    """Exact bytes of a layer's weight under ``spec`` (float: its own bytes).

    Args:
        module: the float layer.
        spec: the spec, or None for float.

    Returns:
        Bytes of the stored weight (+ the activation quantizer's parameters).
    """
    w = module.weight.detach()
    spec = lower_spec(spec, type(module).__name__, plan_target())  # as qb.quantize does
    if spec is None or spec.weight is None:
        return w.numel() * w.element_size()
    n = stored_nbytes(tuple(weight_matrix(module).shape), spec.weight)  # no quantization run
    if spec.activation is not None and not isinstance(module, nn.Embedding):
        n += ACT_QUANTIZER_BYTES
    return n


def measure_many(
    model: LatencyModel, items: Sequence[tuple[str, nn.Module, LayerSpec | None, tuple[int, ...]]]
) -> list[float]:
    """Latencies of many layers, through ``latency_many`` when the engine has it.

    Args:
        model: the latency model.
        items: ``(layer_name, module, spec, input_shape)`` tuples.

    Returns:
        Milliseconds per item.
    """
    many = getattr(model, "latency_many", None)
    if callable(many):
        return [float(v) for v in many(items)]
    return [float(model.latency_ms(*it)) for it in items]


@torch.inference_mode()
def time_model(model: nn.Module, batch: Any, repeats: int = 5) -> float:
    """Median milliseconds of one forward pass of ``model`` on ``batch`` (after one warm-up).

    Args:
        model: the model.
        batch: one batch (``calibration.batch`` convention).
        repeats: timed runs.

    Returns:
        Milliseconds.
    """
    call_model(model, batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call_model(model, batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@dataclass
class CostTable:
    """Bytes and latency of each layer under each option, and of the rest of the model.

    Attributes:
        nbytes: layer -> option key -> exact bytes.
        latency_ms: layer -> option key -> milliseconds (from the latency model).
        input_shapes: layer -> input shape seen on ``example_inputs``.
        rest_bytes: bytes of everything that is not a quantizable layer's weight.
        rest_latency_ms: whole float model time minus the sum of its float layers (≥ 0).
        model_latency_ms: the whole float model, measured end to end.
        engine: the latency model's name.
        calibration: the ratios applied to the standalone layer timings, ``float`` and each
            calibrated spec's label (``search.latency_calibration``); empty: uncalibrated.
    """

    nbytes: dict[str, dict[str, int]]
    latency_ms: dict[str, dict[str, float]]
    input_shapes: dict[str, list[int]]
    rest_bytes: int
    rest_latency_ms: float
    model_latency_ms: float
    engine: str
    calibration: dict[str, float] = field(default_factory=dict)

    def plan_bytes(self, choice: dict[str, str]) -> int:
        """Predicted (exact, barring tied weights) bytes of a choice (layer -> option key)."""
        return self.rest_bytes + sum(self.nbytes[n][k] for n, k in choice.items())

    def plan_latency(self, choice: dict[str, str]) -> float:
        """Predicted milliseconds of a choice: the rest plus each layer's measured kernel."""
        return self.rest_latency_ms + sum(self.latency_ms[n][k] for n, k in choice.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def input_shapes(model: nn.Module, names: Sequence[str], batch: Any) -> dict[str, list[int]]:
    """Shape of each named layer's first input on one batch (hooks).

    Args:
        model: the model.
        names: layer names.
        batch: one batch.

    Returns:
        name -> shape (layers the batch never reaches are absent).
    """
    shapes: dict[str, list[int]] = {}

    def grab(name: str, mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        if inp and isinstance(inp[0], torch.Tensor) and name not in shapes:
            shapes[name] = list(inp[0].shape)

    mods = {n: model.get_submodule(n) for n in names}
    capture(model, mods, [batch], grab, desc="input shapes", progress=False)
    return shapes


def measure_costs(
    model: nn.Module,
    options: dict[str, dict[str, LayerSpec | None]],
    example_inputs: Any,
    latency_model: LatencyModel,
    cache: Any,
    model_key: str,
    progress: bool = True,
) -> CostTable:
    """Bytes and latency of every layer under every option (cached).

    Args:
        model: the float model, BatchNorm already folded.
        options: layer -> option key -> spec (None = float).
        example_inputs: one batch whose shapes are those of deployment.
        latency_model: the engine that times layers.
        cache: a ``search.cache.Cache``.
        model_key: hash of the model (cache key part).
        progress: show a progress bar.

    Returns:
        The CostTable.
    """
    names = list(options)
    shapes = input_shapes(model, names, example_inputs)
    missing = [n for n in names if n not in shapes]
    if missing:
        log.warning("example_inputs never reach %s; their latency counts as 0", missing[:5])
    nbytes = _bytes_per_layer(model, options, cache, model_key, progress)
    mach = machine_id()
    latency = _latency_per_layer(model, options, shapes, latency_model, cache, model_key, mach)
    whole_key = {
        "model": model_key,
        "data": data_hash([example_inputs]),
        "machine": mach,
        "engine": latency_model.name,
    }
    timer = getattr(latency_model, "model_latency_ms", None)
    timer = timer if callable(timer) else time_model
    whole = float(cache.get_or("model_latency", whole_key, lambda: timer(model, example_inputs)))
    float_sum = sum(latency[n][k] for n in names for k, s in options[n].items() if s is None)
    rest, calibration = max(0.0, whole - float_sum), {}
    cal = getattr(latency_model, "calibrate", False)
    engines = getattr(latency_model, "engines_latency_ms", None)
    if callable(engines) and (cal is True or (cal == "auto" and float_sum > whole)):
        rest, calibration, whole = calibrate(
            model, options, latency, whole, example_inputs, engines, cache, whole_key
        )
    return CostTable(
        nbytes=nbytes,
        latency_ms=latency,
        input_shapes=shapes,
        rest_bytes=model_nbytes(model) - _float_weight_bytes(model, names),
        rest_latency_ms=rest,
        model_latency_ms=whole,
        engine=latency_model.name,
        calibration=calibration,
    )


def _bytes_per_layer(
    model: nn.Module,
    options: dict[str, dict[str, LayerSpec | None]],
    cache: Any,
    model_key: str,
    progress: bool,
) -> dict[str, dict[str, int]]:
    """Exact bytes of each layer under each option (cached per model, layer, target, spec)."""
    nbytes: dict[str, dict[str, int]] = {}
    for n in steps(list(options), "search: bytes per layer", enabled=progress):
        mod = model.get_submodule(n)
        nbytes[n] = {
            k: int(
                cache.get_or(
                    "bytes",
                    {
                        "model": model_key,
                        "layer": n,
                        "target": plan_target(),
                        "spec": s.model_dump_json() if s else None,
                    },
                    lambda m=mod, s=s: layer_nbytes(m, s),
                )
            )
            for k, s in options[n].items()
        }
    return nbytes


def _latency_per_layer(
    model: nn.Module,
    options: dict[str, dict[str, LayerSpec | None]],
    shapes: dict[str, Any],
    latency_model: LatencyModel,
    cache: Any,
    model_key: str,
    mach: str,
) -> dict[str, dict[str, float]]:
    """Milliseconds of each layer under each option (cached; missing ones timed together)."""
    names = list(options)
    sig = getattr(latency_model, "signature", None)
    keys, items = [], []
    for n in names:
        if n not in shapes:
            continue
        mod = model.get_submodule(n)
        for k, s in options[n].items():
            ident = sig(mod, s, shapes[n]) if callable(sig) else [model_key, n, str(s), shapes[n]]
            keys.append((n, k, {"engine": latency_model.name, "machine": mach, "sig": ident}))
            items.append((n, mod, s, tuple(shapes[n])))
    got = [cache.get("latency", key) for _, _, key in keys]
    todo = [i for i, v in enumerate(got) if v is None]
    if todo:
        log.info("timing %d layer kernels with %s", len(todo), latency_model.name)
        fresh = measure_many(latency_model, [items[i] for i in todo])
        for i, v in zip(todo, fresh, strict=True):
            got[i] = cache.put("latency", keys[i][2], float(v))
    latency: dict[str, dict[str, float]] = {n: dict.fromkeys(options[n], 0.0) for n in names}
    for (n, k, _), v in zip(keys, got, strict=True):
        latency[n][k] = float(v)
    return latency


def _float_weight_bytes(model: nn.Module, names: list[str]) -> int:
    """Bytes of the layers' float weights, each shared tensor once."""
    seen: set[int] = set()
    float_w = 0
    for n in names:
        w = model.get_submodule(n).weight
        if w.data_ptr() not in seen:
            seen.add(w.data_ptr())
            float_w += w.numel() * w.element_size()
    return float_w


def with_algorithm(plan: Plan, algorithm: str) -> Plan:
    """``plan`` with every spec's algorithm set to ``algorithm``."""
    layers = {
        k: v and v.model_copy(update={"algorithm": algorithm}) for k, v in plan.layers.items()
    }
    return plan.model_copy(update={"layers": layers})


def preset_options(
    base: nn.Module, names: list[str], options: dict[str, dict], plans: dict[str, Plan]
) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    """Options extended with each preset's spec per layer, and each preset's choice.

    Args:
        base: the folded model.
        names: quantizable layer names.
        options: layer -> key -> spec (the search's candidates).
        plans: preset name -> Plan.

    Returns:
        ``(layer -> key -> spec including "preset:<name>" keys, preset -> layer -> key)``.
    """
    cost_options = {n: dict(o) for n, o in options.items()}
    choices: dict[str, dict[str, str]] = {}
    types = quantizable_layers(base)
    for name, plan in plans.items():
        choice = {}
        for n in names:
            spec, _ = plan.spec_for(n, types[n])
            key = next((k for k, s in cost_options[n].items() if s == spec), None)
            if key is None:
                key = f"preset:{name}"
                cost_options[n][key] = spec
            choice[n] = key
        choices[name] = choice
    return cost_options, choices
