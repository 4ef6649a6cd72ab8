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

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import nn

from quantbalance.args import checked
from quantbalance.errors import ConfigError
from quantbalance.evaluate.guards import SQNR_FLOOR_DB
from quantbalance.lowering import hardware_argument
from quantbalance.progress import phase
from quantbalance.search.costs import LatencyModel
from quantbalance.search.executor import Executor
from quantbalance.search.phases import (
    Outcome,
    SearchSetup,
    assemble_result,
    build_problem,
    costs_phase,
    front_phase,
    holdout_phase,
    sensitivity_phase,
)
from quantbalance.search.result import Budget, SearchResult
from quantbalance.search.sensitivity import Candidates
from quantbalance.search.verify import Verifier

__all__ = ["Budget", "SearchResult", "search"]


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
    setup = SearchSetup.build(
        model, task_or, budget, candidates, algorithm, holdout, presets=presets, metric=metric,
        higher_is_better=higher_is_better, eval_id=eval_id, cache_dir=cache_dir,
        executor=executor, target=target, objective=objective,
    )  # fmt: skip
    times["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("single-layer sensitivity")
    sens, sens_evaluator = sensitivity_phase(setup, model, sensitivity_source, measure, progress)
    times["sensitivity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("costs (bytes, latency)")
    costs, preset_choice = costs_phase(setup, latency_model, progress)
    times["costs"] = time.perf_counter() - t0

    problem = build_problem(setup, sens, costs, groups)
    verifier = Verifier(
        problem, setup.options, setup.evaluator, costs, setup.budget, setup.reference,
        setup.src, progress,
    )  # fmt: skip
    t0 = time.perf_counter()
    say("solve and verify")
    verifier.run(max_evals, objective)
    times["verify"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("Pareto front and presets")
    preset_points = front_phase(setup, verifier, problem, preset_choice, front_evals, progress)
    times["front"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("held-out check")
    chosen, met, message = holdout_phase(setup, verifier, preset_points)
    times["holdout"] = time.perf_counter() - t0
    return assemble_result(
        setup, model, verifier, Outcome(chosen, met, message, preset_points), sens,
        sens_evaluator, costs, times, sqnr_floor_db=sqnr_floor_db, max_evals=max_evals,
        objective=objective,
    )  # fmt: skip


def _phases(enabled: bool, t_start: float) -> Callable[[str], None]:
    """A function announcing the search's next phase (one log line each; see ``progress``)."""
    k = [0]

    def say(name: str) -> None:
        k[0] += 1
        if enabled:
            phase("search", k[0], 6, name, time.perf_counter() - t_start)

    return say
