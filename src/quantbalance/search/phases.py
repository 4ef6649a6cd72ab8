"""The phases of ``qb.search``: setup, sensitivity, costs, problem, front, held-out check, result.

``search.search`` runs them in this order; each is a function of what the earlier ones made.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from quantbalance.errors import ConfigError, QuantBalanceError
from quantbalance.evaluate import model_nbytes
from quantbalance.lowering import for_hardware
from quantbalance.plan import Plan
from quantbalance.progress import steps
from quantbalance.search.cache import (
    cache_summary,
)
from quantbalance.search.costs import (
    CostTable,
    measure_costs,
    preset_options,
)
from quantbalance.search.evaluator import PlanEvaluator, as_source
from quantbalance.search.executor import (
    prefetch,
)
from quantbalance.search.latency import TorchLatencyModel
from quantbalance.search.pareto import PlanPoint, mark_fronts, preset_dominance, spread
from quantbalance.search.result import SearchResult
from quantbalance.search.sensitivity import (
    SensitivityTable,
    run_sensitivity,
)
from quantbalance.search.setup import SearchSetup
from quantbalance.search.solver import Problem, sweep
from quantbalance.search.verify import Verifier
from quantbalance.transform import coverage, quantizable_layers

log = logging.getLogger("quantbalance.search.search")  # qb.search's logger, as before the split


def sensitivity_phase(
    setup: SearchSetup, model: nn.Module, sensitivity_source: Any
) -> tuple[SensitivityTable, PlanEvaluator]:
    """Single-layer sensitivities of every candidate (on ``sensitivity_source`` if given).

    Args:
        setup: the search setup (``config.measure``: the measurement mode, see
            ``qb.sensitivity``).
        model: the float model.
        sensitivity_source: a cheaper split for the single-layer measurements, or None.

    Returns:
        ``(table, the evaluator that measured it)``.
    """
    src = setup.src
    sens_src = (
        src
        if sensitivity_source is None
        else as_source(sensitivity_source, src.metric, src.higher_is_better)
    )
    sens_ev = (
        setup.evaluator
        if sens_src is src
        else PlanEvaluator(model, sens_src, None, setup.cache, setup.keys)
    )
    sens_ref = sens_ev.reference()
    sens = run_sensitivity(model, setup.base, sens_src, setup.options, setup.cache,
                           setup.model_key, sens_ref, setup.config.measure,
                           setup.config.progress, setup.executor)  # fmt: skip
    return sens, sens_ev


def costs_phase(setup: SearchSetup) -> tuple[CostTable, dict[str, dict[str, str]]]:
    """Exact bytes and measured latency of every candidate and of the presets' layers.

    Args:
        setup: the search setup (``config.latency_model``: the engine that times layers,
            default ``TorchLatencyModel``).

    Returns:
        ``(cost table, preset name -> the candidate each layer takes under it)``.
    """
    cost_options, preset_choice = preset_options(
        setup.base, setup.names, setup.options, setup.preset_plans
    )
    costs = measure_costs(
        setup.base,
        cost_options,
        setup.src.example_inputs,
        setup.config.latency_model or TorchLatencyModel(),
        setup.cache,
        setup.model_key,
        setup.config.progress,
    )
    return costs, preset_choice


def build_problem(setup: SearchSetup, sens: SensitivityTable, costs: CostTable) -> Problem:
    """The integer program: one candidate per layer, predicted drop, bytes and latency.

    Args:
        setup: the search setup (``config.groups``: layers that must take the same candidate).
        sens: the sensitivity table.
        costs: the cost table.

    Returns:
        The :class:`Problem`.

    Raises:
        ConfigError: a group names a layer that is not quantizable.
    """
    names, options, relative = setup.names, setup.options, setup.budget.relative
    return Problem(
        layers=names,
        keys=[list(options[n]) for n in names],
        drop=[[sens.drop(n, k, relative, floor=True) for k in options[n]] for n in names],
        nbytes=[[float(costs.nbytes[n][k]) for k in options[n]] for n in names],
        latency=[[costs.latency_ms[n][k] for k in options[n]] for n in names],
        groups=layer_groups(names, setup.config.groups),
    )


def verify_phase(setup: SearchSetup, problem: Problem, costs: CostTable) -> Verifier:
    """Solve on the predictions, evaluate the Plans for real, correct; ``config.max_evals``
    evaluations at most, for ``config.objective``.

    Args:
        setup: the search setup.
        problem: the integer program.
        costs: the cost table.

    Returns:
        The verification state: every point so far, the evaluations spent (``n_evals``).
    """
    c = setup.config
    verifier = Verifier(problem, setup.options, setup.evaluator, costs, setup.budget,
                        setup.reference, setup.src, c.progress)  # fmt: skip
    verifier.run(c.max_evals, c.objective)
    return verifier


def layer_groups(names: list[str], groups: Sequence[Sequence[str]] | None) -> list[list[int]]:
    """Indices into ``names`` of each group of tied layers.

    Args:
        names: the quantizable layers, in order.
        groups: lists of layer names.

    Returns:
        One list of indices per group.

    Raises:
        ConfigError: a group names a layer not in ``names``.
    """
    out = []
    for g in groups or []:
        missing = [n for n in g if n not in names]
        if missing:
            raise ConfigError(f"groups name layers {missing} that are not quantizable layers")
        out.append([names.index(n) for n in g])
    return out


def front_phase(
    setup: SearchSetup,
    verifier: Verifier,
    problem: Problem,
    preset_choice: dict[str, dict[str, str]],
) -> list[PlanPoint]:
    """Sweep the budget for the Pareto front (``config.front_evals`` points measured), place
    the presets.

    Args:
        setup: the search setup.
        verifier: the verification state (holds every point).
        problem: the integer program.
        preset_choice: each preset's candidate per layer.

    Returns:
        The presets' points (a preset that fails is skipped with a warning).
    """
    for axis in ("bytes", "latency"):
        for s in sweep(problem, axis, n_points=10):
            verifier.predicted(s)
    todo = [
        p
        for p in verifier.points.values()
        if not p.measured and p.kind == "front" and set((p.choice or {}).values()) != {"float"}
    ]
    todo.sort(key=lambda p: p.nbytes)
    todo = spread(todo, setup.config.front_evals)
    progress = setup.config.progress
    hold = setup.holdout
    both = {"search": "preset"} | ({"holdout": "holdout"} if hold is not None else {})
    jobs = [(p.plan, {"search": "front"}) for p in todo]
    jobs += [(plan, both) for plan in setup.preset_plans.values()]
    prefetch(setup.evaluator, jobs, setup.executor)  # parallel: fill the cache first
    for p in steps(todo, "search: front points", enabled=progress):
        verifier.measure_point(p, "front")
    preset_points = []
    for name, plan in steps(setup.preset_plans.items(), "search: presets", enabled=progress):
        try:
            preset_points.append(
                verifier.preset_point(name, plan, preset_choice[name], hold is not None)
            )
        except QuantBalanceError as e:
            log.warning("preset %s skipped: %s", name, e)
    return preset_points


def holdout_phase(
    setup: SearchSetup, verifier: Verifier, preset_points: list[PlanPoint]
) -> Outcome:
    """Choose the Plan (judged on the held-out split when there is one); measure presets there.

    Args:
        setup: the search setup.
        verifier: the verification state.
        preset_points: the presets' points.

    Returns:
        The :class:`Outcome`: the chosen point, whether it met the budget, why, the presets.
    """
    has_holdout = setup.holdout is not None
    chosen, met, message = verifier.choose(has_holdout, preset_points)
    if has_holdout:
        for p in preset_points:
            verifier.holdout(p)
    return Outcome(chosen, met, message, preset_points)


@dataclass
class Outcome:
    """The verification's verdict: the chosen point, whether it met the budget, why, presets."""

    chosen: PlanPoint
    met: bool
    message: str
    preset_points: list[PlanPoint]


def assemble_result(
    setup: SearchSetup,
    model: nn.Module,
    verifier: Verifier,
    outcome: Outcome,
    sens: SensitivityTable,
    sens_evaluator: PlanEvaluator,
    costs: CostTable,
    times: dict[str, float],
) -> SearchResult:
    """The :class:`SearchResult`: numerics check, fronts, float point, coverage and facts.

    Args:
        setup: the search setup.
        model: the float model.
        verifier: the verification state.
        outcome: the chosen point, verdict and presets.
        sens: the sensitivity table; sens_evaluator: the evaluator that measured it.
        costs: the cost table.
        times: seconds per phase.

    Returns:
        The result.
    """
    ev, names, c = setup.evaluator, setup.names, setup.config
    chosen, message, pre_points = outcome.chosen, outcome.message, outcome.preset_points
    numerics = ev.numerics(chosen.plan, c.sqnr_floor_db)
    if numerics:
        message += " Numerical problems in the chosen Plan: " + "; ".join(
            f"layer {n!r}: {p}" for n, p in numerics.items()
        )
    if chosen.kind == "preset":
        chosen = dataclasses.replace(chosen, kind="chosen")
        message += " (a uniform preset: no evaluated mixed Plan was cheaper)"
    chosen.kind = "chosen"
    front = sorted(verifier.points.values(), key=lambda p: p.nbytes)
    float_point = _float_point(setup, model, costs)
    mark_fronts(front)
    dominated = preset_dominance(pre_points, front, ("bytes", "latency"))
    mark_fronts([*front, *pre_points, float_point])  # presets are Plans: they compete too
    chosen_specs = chosen.plan.resolve(quantizable_layers(setup.base))
    cov = coverage(setup.base, [n for n, spec in chosen_specs.items() if spec.weight is not None])
    notes = [*ev.notes, *(sens_evaluator.notes if sens_evaluator is not ev else [])]
    info = {
        "task": setup.src.name,
        "algorithm": setup.algorithm,
        "objective": c.objective,
        "max_evals": c.max_evals,
        "cache_hits": setup.cache.hits,
        "cache_misses": setup.cache.misses,
        "cache": cache_summary(setup.cache, notes),
        "eval_opaque": setup.src.fingerprint.opaque if setup.src.fingerprint else [],
        "numerics": numerics,
        "sqnr_floor_db": c.sqnr_floor_db,
        "engine": costs.engine,
        "layers": len(names),
        "coverage": cov.summary(),
        "left_float": cov.left_float(),
        "config": c.record(),  # every option, for the report and to run the search again
    }
    return SearchResult(
        plan=for_hardware(chosen.plan, "auto"),  # the int8 target it was evaluated for
        chosen=chosen,
        met_budget=outcome.met,
        message=message,
        budget=setup.budget,
        metric=setup.src.metric,
        higher_is_better=setup.src.higher_is_better,
        reference=dict(setup.reference),
        holdout_reference=float_point.holdout_metrics,
        float_point=float_point,
        front=front,
        presets=pre_points,
        dominated=dominated,
        sensitivity=sens,
        costs=costs,
        log=ev.log,
        timings=times,
        info=info,
    )


def _float_point(setup: SearchSetup, model: nn.Module, costs: CostTable) -> PlanPoint:
    """The float model on the axes (its held-out metrics too when there is a held-out split)."""
    point = PlanPoint(
        "float",
        "float",
        Plan(name="float"),
        model_nbytes(model),
        costs.plan_latency(dict.fromkeys(setup.names, "float")),
        0.0,
        dict(setup.reference),
        0.0,
    )
    if setup.holdout is not None:
        point.holdout_metrics = setup.evaluator.reference("holdout")
        point.holdout_drop = 0.0
    return point
