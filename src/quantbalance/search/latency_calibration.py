"""Calibrate the per-layer latency model against whole compiled engines.

Each layer's kernel is timed alone (``search.latency``), but the engine runs the whole network
under ``torch.compile``, which keeps activations int8 and channels-last between int8
convolutions, fuses ReLUs and residual adds into the convolutions and drops the per-call
overhead of small kernels. On a small CNN (fashion, batch 64: 14 layers of ~1 ms) the layers
timed one by one did not add up to the engine: the float layers summed to 1.27x the whole
compiled float model, the int8 convolutions to 2.2x their engine, and the dequantized layers
with dynamic input ranges to 0.5x theirs (the compiled engine re-lays their inputs out).

So each spec is calibrated against one whole-engine run of its *uniform plan*: every layer that
may take the spec takes it, the others stay float. With the rest of the model ``R`` (the whole
float model minus its float layers), the float layers' calibrated times ``c_f`` and the spec's
standalone times ``t_S``, the ratio is::

    r_S = (W_S - R - sum(c_f over the layers not in the plan)) / sum(t_S over the plan)

and every layer's time under ``S`` is ``r_S * t_S``: exact for the uniform plans, apportioned
by the standalone timings for mixed ones. The float engine is timed in the same interleaved
rounds (each plan is cached relative to it, so runs under different loads stay comparable);
it becomes the whole float model ``W_float``, and ``r_float = min(1, W_float / sum(t_float))``
(``R`` is then 0 when the float layers alone exceed the whole model).

``calibrate="auto"`` calibrates only where the standalone timings demonstrably do not add up:
when the float layers timed alone exceed the whole compiled float model. On models with large
layers (minilm, batch 32: every row within 5 % uncalibrated) the float layers fit inside the
whole model and no engine is built, so the search pays nothing there. Specs whose layers hold
less than :data:`MIN_SHARE` of their uniform plan's predicted time are not calibrated: their
ratio would be the noise of two whole-model timings.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quantbalance.calibration.batch import call_model
from quantbalance.deploy.torch_engine import to_torch_engine
from quantbalance.evaluate.timing import time_interleaved
from quantbalance.lowering import plan_target
from quantbalance.plan import LayerSpec, Plan
from quantbalance.quantize import quantize

log = logging.getLogger(__name__)

#: Bumped whenever the calibration changes what it measures (it is part of every cache key).
METHOD = "uniform-engine-1"
#: A spec's layers must hold this share of its uniform plan's predicted time to be calibrated.
MIN_SHARE = 0.25
#: Seconds of interleaved timing the whole engines get (at least ``repeats`` rounds, at most 5x).
ROUND_S = 2.0
#: Ratios are clamped to ``[1 / MAX_RATIO, MAX_RATIO]`` (a warning says when).
MAX_RATIO = 10.0

Options = dict[str, dict[str, LayerSpec | None]]
EngineTimer = Callable[[nn.Module, dict[str, dict[str, LayerSpec]], Any], dict[str, float]]


def spec_id(spec: LayerSpec) -> str:
    """Key of a spec's latency group (the algorithm does not change the deployed kernels).

    Args:
        spec: the spec.

    Returns:
        Its JSON with ``algorithm`` set to ``rtn``.
    """
    return spec.model_copy(update={"algorithm": "rtn"}).model_dump_json()


def uniform_plans(options: Options) -> dict[str, dict[str, LayerSpec]]:
    """Each non-float spec's uniform plan: every layer that may take it, with it.

    Args:
        options: layer -> option key -> spec (None = float).

    Returns:
        spec id -> layer -> spec, in first-seen order.
    """
    plans: dict[str, dict[str, LayerSpec]] = {}
    for name, opts in options.items():
        for spec in opts.values():
            if spec is not None:
                plans.setdefault(spec_id(spec), {}).setdefault(name, spec)
    return plans


def float_ratio(float_ms: dict[str, float], whole_ms: float) -> tuple[float, float]:
    """The float layers' ratio and the rest of the model.

    Args:
        float_ms: layer -> its float layer timed alone.
        whole_ms: the whole float model as the engine runs it.

    Returns:
        ``(r_float, rest_ms)``: ``r_float = min(1, whole / sum)``, ``rest = whole - r * sum``.
    """
    total = sum(float_ms.values())
    if total <= 0:
        return 1.0, max(0.0, whole_ms)
    ratio = min(1.0, whole_ms / total)
    return ratio, max(0.0, whole_ms - ratio * total)


def _plan_key(layers: dict[str, LayerSpec]) -> str:
    text = "|".join(f"{n}={spec_id(s)}" for n, s in layers.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def calibrate(
    model: nn.Module,
    options: Options,
    latency: dict[str, dict[str, float]],
    whole_ms: float,
    example_inputs: Any,
    timer: EngineTimer,
    cache: Any,
    key: dict[str, Any],
) -> tuple[float, dict[str, float], float]:
    """Scale the standalone timings in place by their calibration ratios (see the module doc).

    Args:
        model: the float model (BatchNorm folded).
        options: layer -> option key -> spec.
        latency: layer -> option key -> standalone milliseconds; scaled in place.
        whole_ms: the whole float model as the engine runs it.
        example_inputs: the timing batch.
        timer: ``timer(model, {plan id: layer -> spec}, example_inputs)`` -> plan id -> ms,
            the engines timed interleaved, ``"float"`` (the float engine) among them.
        cache: a ``search.cache.Cache`` (whole-engine times under ``engine_latency``).
        key: the cache key's common part (model, data, machine, engine).

    Returns:
        ``(rest_ms, label -> ratio, whole float model ms)``: the ratios of ``float`` and of
        each calibrated spec's label; the float engine as timed beside the uniform plans'
        (more rounds than ``whole_ms``; ``whole_ms`` when no engine was timed).
    """

    def engines(todo: dict[str, tuple[dict[str, LayerSpec], float, float]]) -> dict[str, float]:
        return _engine_times(model, todo, example_inputs, timer, cache, key)

    ratios, r_float, rest, whole = _ratios(options, latency, whole_ms, engines)
    labels = {"float": r_float}
    for n, opts in options.items():
        for k, s in opts.items():
            r = r_float if s is None else ratios.get(spec_id(s))
            if r is not None:
                latency[n][k] *= r
                labels.setdefault("float" if s is None else s.label, r)
    log.info("latency calibrated against whole engines: %s", labels)
    return rest, labels, whole


def _ratios(
    options: Options,
    latency: dict[str, dict[str, float]],
    whole_ms: float,
    engines: Callable[[dict[str, tuple[dict[str, LayerSpec], float, float]]], dict[str, float]],
) -> tuple[dict[str, float], float, float, float]:
    """``(spec id -> ratio, r_float, rest_ms, whole float ms)``; uncalibrated specs absent."""
    float_ms = {
        n: next(latency[n][k] for k, s in opts.items() if s is None)
        for n, opts in options.items()
        if any(s is None for s in opts.values())
    }
    r_float, rest = float_ratio(float_ms, whole_ms)
    todo: dict[str, tuple[dict[str, LayerSpec], float, float]] = {}
    for sid, layers in uniform_plans(options).items():
        own = sum(latency[n][_key_of(options[n], sid)] for n in layers)
        others = sum(v for n, v in float_ms.items() if n not in layers)
        if any(n not in float_ms for n in options if n not in layers):
            continue  # a layer outside the plan cannot stay float: no uniform plan
        if own <= 0 or own < MIN_SHARE * (rest + r_float * others + own):
            continue
        todo[sid] = (layers, own, others)
    if not todo:
        return {}, r_float, rest, whole_ms
    whole = engines(todo)
    r_float, rest = float_ratio(float_ms, whole.get("float", whole_ms))
    ratios = {}
    for sid, (_, own, others) in todo.items():
        if sid not in whole:
            continue
        r = (whole[sid] - rest - r_float * others) / own
        ratios[sid] = min(MAX_RATIO, max(1 / MAX_RATIO, r))
        if ratios[sid] != r:
            log.warning("latency calibration: ratio %.3g clamped to %.3g (%s)", r, ratios[sid], sid)
    return ratios, r_float, rest, whole.get("float", whole_ms)


def _key_of(opts: dict[str, LayerSpec | None], sid: str) -> str:
    return next(k for k, s in opts.items() if s is not None and spec_id(s) == sid)


def _engine_times(
    model: nn.Module,
    todo: dict[str, tuple[dict[str, LayerSpec], float, float]],
    example_inputs: Any,
    timer: EngineTimer,
    cache: Any,
    key: dict[str, Any],
) -> dict[str, float]:
    """Whole-engine ms of each uniform plan and of the float engine (``"float"``), cached.

    The engines are timed interleaved with the float engine; each plan is cached relative to
    the float engine of its own run, so that runs under different loads stay comparable.
    """
    keys = {
        sid: {**key, "method": METHOD, "plan": _plan_key(lay)} for sid, (lay, _, _) in todo.items()
    }
    float_key = {**key, "method": METHOD, "plan": "float"}
    float_ms = cache.get("engine_latency", float_key)
    got = {sid: cache.get("engine_latency", k) for sid, k in keys.items()}
    missing = {sid: todo[sid][0] for sid, v in got.items() if v is None}
    if missing:
        t0 = time.perf_counter()
        try:
            ms = timer(model, missing, example_inputs)
        except Exception as e:  # torch.compile fails with many exception types
            log.warning("latency calibration: the whole engines were not timed (%s)", e)
            ms = {}
        log.info(
            "latency calibration: %d whole engines built and timed in %.1f s",
            len(missing), time.perf_counter() - t0,
        )  # fmt: skip
        if ms.get("float", 0) > 0:
            if float_ms is None:
                float_ms = cache.put("engine_latency", float_key, float(ms["float"]))
            for sid in (s for s in missing if s in ms):
                got[sid] = cache.put("engine_latency", keys[sid], ms[sid] / ms["float"])
    if float_ms is None:
        return {}
    out = {sid: float(v) * float(float_ms) for sid, v in got.items() if v is not None}
    return {"float": float(float_ms), **out}


def time_uniform_engines(
    model: nn.Module, plans: dict[str, dict[str, LayerSpec]], example_inputs: Any, rounds: int
) -> dict[str, float]:
    """Median ms of the compiled torch engine of each plan and of the float model, interleaved.

    Each plan is quantized round-to-nearest with the timing batch as calibration data (the
    algorithm and the ranges do not change the kernels) and built with ``to_torch_engine``, as
    deployed. A plan that fails to quantize or compile is left out (a warning says why).

    Args:
        model: the float model (BatchNorm folded).
        plans: plan id -> layer -> spec.
        example_inputs: the timing batch.
        rounds: timed rounds (more for small engines, see :data:`ROUND_S`).

    Returns:
        plan id -> ms, and ``"float"``: the float model's engine.
    """
    runs = {"float": to_torch_engine(model)}
    for i, (pid, layers) in enumerate(plans.items()):
        specs = {n: s.model_copy(update={"algorithm": "rtn"}) for n, s in layers.items()}
        plan = Plan(name=f"calibrate-{i}", layers=specs, hardware=plan_target())
        try:
            runs[pid] = to_torch_engine(quantize(model, plan, [example_inputs], progress=False))
            with torch.inference_mode():
                call_model(runs[pid], example_inputs)  # compile and warm up
        except Exception as e:  # quantize / torch.compile fail with many exception types
            log.warning("latency calibration: the uniform plan %s was not timed (%s)", i, e)
            runs.pop(pid, None)
    calls = {pid: lambda b, e=eng: call_model(e, b) for pid, eng in runs.items()}
    with torch.inference_mode():
        t0 = time.perf_counter()
        for run in calls.values():
            run(example_inputs)
        one_round = time.perf_counter() - t0
    # small engines: more rounds (up to ROUND_S of timing), so that a load spike is an outlier
    rounds = min(5 * rounds, max(rounds, math.ceil(ROUND_S / max(one_round, 1e-6))))
    ms = {pid: per[0] for pid, per in time_interleaved(calls, {0: example_inputs}, rounds).items()}
    log.info("latency calibration: %d rounds, engine / float: %s", rounds, {
        i: round(ms[pid] / ms["float"], 3) for i, pid in enumerate(ms)
    })  # fmt: skip
    return ms
