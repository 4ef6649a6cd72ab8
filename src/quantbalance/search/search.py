"""qb.search: per-layer precision under a budget, verified with the real eval function.

1. Sensitivity of every layer under every candidate (cached), and costs: exact bytes and
   measured per-layer latency.
2. A 0/1 integer program (``search.solver``) picks one candidate per layer on the predicted,
   additive effects.
3. The picked Plan is quantized and evaluated. When prediction and measurement disagree the
   predicted-drop limit is rescaled by the observed ratio (or bisected) and the program
   re-solved; a Plan seen before is repaired greedily (its most damaging layer upgraded).
   For size and latency budgets the next-best distinct solutions are verified instead.
   All of this stops after ``max_evals`` evaluations.
4. A budget sweep gives the Pareto front (a few points evaluated), the uniform presets are
   placed on the same axes, and the chosen Plan is judged on the held-out split.

An impossible budget never raises: the result holds the closest Plan, ``met_budget=False`` and a
message saying why.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from quantbalance.algorithms.base import options_in_force
from quantbalance.args import checked
from quantbalance.errors import ConfigError, QuantBalanceError
from quantbalance.evaluate import model_nbytes
from quantbalance.evaluate.guards import SQNR_FLOOR_DB
from quantbalance.formats.config import FrozenConfig
from quantbalance.lowering import for_hardware, hardware_argument, plan_target
from quantbalance.plan import PRESETS, Plan, preset
from quantbalance.progress import phase, steps
from quantbalance.search.cache import (
    Cache,
    cache_summary,
    data_hash,
    default_cache_dir,
    model_hash,
)
from quantbalance.search.costs import (
    CostTable,
    LatencyModel,
    measure_costs,
    preset_options,
    with_algorithm,
)
from quantbalance.search.evaluator import PlanEvaluator, as_holdout, as_source
from quantbalance.search.executor import (
    Executor,
    MemoryCache,
    SerialExecutor,
    make_executor,
    prefetch,
)
from quantbalance.search.latency import TorchLatencyModel
from quantbalance.search.pareto import PlanPoint, mark_fronts, preset_dominance, spread
from quantbalance.search.sensitivity import (
    Candidates,
    SensitivityTable,
    latency_candidates,
    layer_options,
)
from quantbalance.search.sensitivity import run_sensitivity as _run_sensitivity
from quantbalance.search.solver import Problem, sweep
from quantbalance.search.verify import Verifier
from quantbalance.transform import coverage, fold_batchnorm, quantizable_layers

log = logging.getLogger(__name__)


class Budget(FrozenConfig):
    """What the chosen Plan must satisfy: exactly one of a metric drop, a size or a latency.

    Args:
        max_drop: largest allowed metric drop (``0.01`` with ``relative=True`` = 1 %).
        relative: ``max_drop`` is a fraction of the float metric (else in metric units).
        max_bytes: largest model size in bytes.
        max_latency_ms: largest predicted latency (milliseconds, example-input shapes).
        metric: the protected metric (default: the task's primary metric).

    Example:
        >>> Budget(max_drop=0.01).kind
        'drop'
    """

    max_drop: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    relative: bool = True
    max_bytes: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_latency_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    metric: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Budget:
        given = [
            k for k in ("max_drop", "max_bytes", "max_latency_ms") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of max_drop, max_bytes, max_latency_ms (got "
                f"{', '.join(given) or 'none'}); e.g. Budget(max_drop=0.01)"
            )
        return self

    @property
    def kind(self) -> Literal["drop", "bytes", "latency"]:
        """``drop``, ``bytes`` or ``latency``."""
        if self.max_drop is not None:
            return "drop"
        return "bytes" if self.max_bytes is not None else "latency"

    @property
    def limit(self) -> float:
        """The bound, in its own units."""
        return float(
            {"drop": self.max_drop, "bytes": self.max_bytes, "latency": self.max_latency_ms}[
                self.kind
            ]
        )

    def describe(self) -> str:
        """Human text, e.g. ``drop ≤ 1 % of cosine_mean``."""
        if self.kind == "drop":
            amount = f"{100 * self.limit:g} %" if self.relative else f"{self.limit:g}"
            return f"drop ≤ {amount}" + (f" of {self.metric}" if self.metric else "")
        if self.kind == "bytes":
            n = self.limit
            return f"size ≤ {n / 1e6:.2f} MB" if n >= 1e6 else f"size ≤ {n / 1e3:.1f} kB"
        return f"latency ≤ {self.limit:g} ms"


@dataclass
class SearchResult:
    """What ``search`` found, with every measurement behind it.

    Attributes:
        plan: the chosen Plan (exact layer names; None values keep a layer float).
        chosen: the chosen Plan's point (bytes, latency, metrics, held-out metrics).
        met_budget: whether it meets the budget (on the held-out split when there is one).
        message: why / why not, in words.
        budget: the budget.
        metric: the protected metric; higher_is_better: its direction.
        reference: float metrics (search split); holdout_reference: on the held-out split.
        float_point: the float model on the axes.
        front: searched Plans (measured and predicted) with their front flags.
        presets: uniform presets on the same axes.
        dominated: front points strictly dominated by a preset (measured), if any.
        sensitivity: the sensitivity table; costs: the cost table.
        log: every evaluation, in order; timings: seconds per phase.
    """

    plan: Plan
    chosen: PlanPoint
    met_budget: bool
    message: str
    budget: Budget
    metric: str
    higher_is_better: bool
    reference: dict[str, float]
    holdout_reference: dict[str, float] | None
    float_point: PlanPoint
    front: list[PlanPoint]
    presets: list[PlanPoint]
    dominated: list[dict[str, str]]
    sensitivity: SensitivityTable
    costs: CostTable
    log: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything (infinite values become None)."""
        d = {
            "plan": self.plan.model_dump(mode="json"),
            "chosen": self.chosen.to_dict(),
            "met_budget": self.met_budget,
            "message": self.message,
            "budget": self.budget.model_dump() | {"kind": self.budget.kind},
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "reference": self.reference,
            "holdout_reference": self.holdout_reference,
            "float": self.float_point.to_dict(),
            "front": [p.to_dict() for p in self.front],
            "presets": [p.to_dict() for p in self.presets],
            "dominated": self.dominated,
            "sensitivity": self.sensitivity.to_dict(),
            "costs": self.costs.to_dict(),
            "log": self.log,
            "timings": self.timings,
            "info": self.info,
        }
        return _finite(d)


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _groups(names: list[str], groups: Sequence[Sequence[str]] | None) -> list[list[int]]:
    out = []
    for g in groups or []:
        missing = [n for n in g if n not in names]
        if missing:
            raise ConfigError(f"groups name layers {missing} that are not quantizable layers")
        out.append([names.index(n) for n in g])
    return out


@checked
@hardware_argument
def search(
    model: nn.Module,
    task_or: Any,
    budget: Budget,
    candidates: Candidates = None,
    algorithm: str = "rtn",
    max_evals: int = 8,
    holdout: Any = None,
    *,
    groups: Sequence[Sequence[str]] | None = None,
    objective: Literal["bytes", "latency"] = "bytes",
    front_evals: int = 3,
    presets: Sequence[str] | None = None,
    latency_model: LatencyModel | None = None,
    cache_dir: str | os.PathLike[str] | None = "default",
    metric: str | None = None,
    higher_is_better: bool | None = None,
    eval_id: str | None = None,
    measure: bool | int = True,
    sensitivity_source: Any = None,
    progress: bool = True,
    executor: str | Executor | None = None,
    target: str | None = None,
    sqnr_floor_db: float = SQNR_FLOOR_DB,
    hardware: Literal["auto", "vnni", "avx2"] = "auto",
) -> SearchResult:
    """Find the per-layer precision that meets ``budget`` at the least cost.

    Args:
        model: the float model (not modified).
        task_or: a ``Task`` or ``(calib_data, eval_fn)`` (the search split).
        budget: a :class:`Budget`.
        candidates: per-layer candidates (see ``search.sensitivity.layer_options``; default
            ``default_candidates``, plus per-token dynamic W8A8 for Linear layers when
            ``objective="latency"``: ``latency_candidates``).
        algorithm: weight algorithm for every candidate (``rtn`` by default).
        max_evals: evaluations the verification loop may spend (≥ 1).
        holdout: held-out split: a ``Task`` or an eval function; the budget is judged on it.
        groups: lists of layer names that must take the same candidate (e.g. q/k/v).
        objective: what a drop budget minimises: ``bytes`` or ``latency``.
        front_evals: budget-sweep Plans evaluated for the Pareto front.
        presets: uniform presets placed on the axes (default: all of ``PRESETS``).
        latency_model: the engine that times layers (default ``TorchLatencyModel``).
        cache_dir: cache folder (``"default"``: ``$QB_CACHE_DIR`` or ``~/.cache``; None: off).
        metric: protected metric (default ``budget.metric`` or the task's primary metric).
        higher_is_better: its direction (tuples only; tasks know theirs).
        eval_id: extra identity of the eval function for the cache.
        measure: sensitivity measurement mode (``True``, ``False`` or a count, see
            ``qb.sensitivity``).
        sensitivity_source: a cheaper ``Task``/tuple for the single-layer measurements
            (e.g. fewer evaluation samples); default the search split.
        progress: progress bars.
        executor: where independent evaluations run (single-layer sensitivities, front
            points, presets): ``"serial"`` (default), ``"ray"`` (``$QB_RAY_ADDRESS`` or a local
            Ray) or an ``Executor`` (``search.executor``, e.g. ``RayExecutor(address=...)``).
            Results go through the same cache; the verification rounds stay serial.
        target: deployment engine whose exact schemes are the candidates (``torch``, ``ort``,
            ``tensorrt``, ``vllm``, ``llama.cpp``; see ``search.targets``); only when
            ``candidates`` is None.
        sqnr_floor_db: the chosen Plan's layers whose output SQNR is below this (dB), or whose
            output has NaN/inf, are named in the message and in ``info["numerics"]``.
        hardware: the int8 target every Plan is quantized, costed and evaluated for
            (``Plan.hardware``): ``auto`` (this machine), ``vnni`` or ``avx2`` (see
            ``qb.quantize``); latencies are still timed on this machine's kernels.

    Returns:
        The :class:`SearchResult`.
    """
    if max_evals < 1:
        raise ConfigError(f"max_evals={max_evals}: give at least 1")
    if objective not in ("bytes", "latency"):
        raise ConfigError(f"objective={objective!r}: accepted 'bytes' or 'latency'")
    times: dict[str, float] = {}
    t0 = t_start = time.perf_counter()
    say = _phases(progress, t_start)
    say("setup: float reference")
    names_p = list(presets) if presets is not None else list(PRESETS)
    preset_plans = {n: with_algorithm(preset(n), algorithm) for n in names_p}
    src = as_source(task_or, metric or budget.metric, higher_is_better, eval_id)
    budget = budget.model_copy(update={"metric": src.metric})
    hold = as_holdout(holdout, src)
    run = make_executor(executor)
    cache = (Cache if isinstance(run, SerialExecutor) else MemoryCache)(
        default_cache_dir() if cache_dir == "default" else cache_dir
    )
    mkey = model_hash(model)
    base = copy.deepcopy(model).eval()
    fold_batchnorm(base)
    names = list(quantizable_layers(base))
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no quantizable layers (Linear, Conv1d/2d, Embedding): "
            "nothing to search"
        )
    if candidates is None and target is not None:
        from quantbalance.search.targets import target_candidates

        candidates = target_candidates(target, objective)
    if candidates is None and objective == "latency":
        candidates = lambda _name, mod: latency_candidates(mod)  # noqa: E731
    options = layer_options(base, names, candidates, algorithm)
    keys = {
        "model": mkey,
        "data": data_hash(src.calib_data),
        "algorithm": algorithm,
        "options": options_in_force(),
        "target": plan_target(),
    }
    ev = PlanEvaluator(model, src, hold, cache, keys)
    reference = ev.reference()  # before any cache lookup: every measurement is keyed by it
    if hold is not None:
        ev.reference("holdout")
    times["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("single-layer sensitivity")
    s_src = (
        src
        if sensitivity_source is None
        else as_source(sensitivity_source, src.metric, src.higher_is_better)
    )
    s_ev = ev if s_src is src else PlanEvaluator(model, s_src, None, cache, keys)
    s_ref = s_ev.reference()
    sens = _run_sensitivity(model, base, s_src, options, cache, mkey, s_ref, measure, progress,
                            run)  # fmt: skip
    times["sensitivity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("costs (bytes, latency)")
    cost_options, preset_choice = preset_options(base, names, options, preset_plans)
    costs = measure_costs(
        base,
        cost_options,
        src.example_inputs,
        latency_model or TorchLatencyModel(),
        cache,
        mkey,
        progress,
    )
    times["costs"] = time.perf_counter() - t0

    problem = Problem(
        layers=names,
        keys=[list(options[n]) for n in names],
        drop=[[sens.drop(n, k, budget.relative, floor=True) for k in options[n]] for n in names],
        nbytes=[[float(costs.nbytes[n][k]) for k in options[n]] for n in names],
        latency=[[costs.latency_ms[n][k] for k in options[n]] for n in names],
        groups=_groups(names, groups),
    )
    ver = Verifier(problem, options, ev, costs, budget, reference, src, progress)
    t0 = time.perf_counter()
    say("solve and verify")
    ver.run(max_evals, objective)
    times["verify"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("Pareto front and presets")
    for axis in ("bytes", "latency"):
        for s in sweep(problem, axis, n_points=10):
            ver.predicted(s)
    todo = [
        p
        for p in ver.points.values()
        if not p.measured and p.kind == "front" and set((p.choice or {}).values()) != {"float"}
    ]
    todo.sort(key=lambda p: p.nbytes)
    todo = spread(todo, front_evals)
    both = {"search": "preset"} | ({"holdout": "holdout"} if hold is not None else {})
    jobs = [(p.plan, {"search": "front"}) for p in todo]
    jobs += [(plan, both) for plan in preset_plans.values()]
    prefetch(ev, jobs, run)  # parallel executors: fill the cache; the loops below read it
    for p in steps(todo, "search: front points", enabled=progress):
        ver.measure_point(p, "front")
    pre_points = []
    for name, plan in steps(preset_plans.items(), "search: presets", enabled=progress):
        try:
            pre_points.append(ver.preset_point(name, plan, preset_choice[name], hold is not None))
        except QuantBalanceError as e:
            log.warning("preset %s skipped: %s", name, e)
    times["front"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("held-out check")
    chosen, met, message = ver.choose(hold is not None, pre_points)
    if hold is not None:
        for p in pre_points:
            ver.holdout(p)
    times["holdout"] = time.perf_counter() - t0

    numerics = ev.numerics(chosen.plan, sqnr_floor_db)
    if numerics:
        message += " Numerical problems in the chosen Plan: " + "; ".join(
            f"layer {n!r}: {p}" for n, p in numerics.items()
        )
    if chosen.kind == "preset":
        chosen = dataclasses.replace(chosen, kind="chosen")
        message += " (a uniform preset: no evaluated mixed Plan was cheaper)"
    chosen.kind = "chosen"
    front = sorted(ver.points.values(), key=lambda p: p.nbytes)
    float_point = PlanPoint(
        "float",
        "float",
        Plan(name="float"),
        model_nbytes(model),
        costs.plan_latency(dict.fromkeys(names, "float")),
        0.0,
        dict(reference),
        0.0,
    )
    if hold is not None:
        float_point.holdout_metrics = ev.reference("holdout")
        float_point.holdout_drop = 0.0
    mark_fronts(front)
    dominated = preset_dominance(pre_points, front, ("bytes", "latency"))
    mark_fronts([*front, *pre_points, float_point])  # presets are Plans: they compete too
    chosen_specs = chosen.plan.resolve(quantizable_layers(base))
    cov = coverage(base, [n for n, spec in chosen_specs.items() if spec.weight is not None])
    return SearchResult(
        plan=for_hardware(chosen.plan, "auto"),  # the int8 target it was evaluated for
        chosen=chosen,
        met_budget=met,
        message=message,
        budget=budget,
        metric=src.metric,
        higher_is_better=src.higher_is_better,
        reference=dict(reference),
        holdout_reference=float_point.holdout_metrics,
        float_point=float_point,
        front=front,
        presets=pre_points,
        dominated=dominated,
        sensitivity=sens,
        costs=costs,
        log=ev.log,
        timings=times,
        info={
            "task": src.name,
            "algorithm": algorithm,
            "objective": objective,
            "max_evals": max_evals,
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache": cache_summary(cache, [*ev.notes, *(s_ev.notes if s_ev is not ev else [])]),
            "eval_opaque": src.fingerprint.opaque if src.fingerprint else [],
            "numerics": numerics,
            "sqnr_floor_db": sqnr_floor_db,
            "engine": costs.engine,
            "layers": len(names),
            "coverage": cov.summary(),
            "left_float": cov.left_float(),
        },
    )


def _phases(enabled: bool, t_start: float) -> Callable[[str], None]:
    """A function announcing the search's next phase (one log line each; see ``progress``)."""
    k = [0]

    def say(name: str) -> None:
        k[0] += 1
        if enabled:
            phase("search", k[0], 6, name, time.perf_counter() - t_start)

    return say
