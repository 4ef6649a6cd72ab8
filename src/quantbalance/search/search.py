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

Each step is a function of ``search.phases`` (setup, sensitivity, costs, verify, front, held-out
check); every option they read is one field of a :class:`SearchConfig`. An impossible budget
never raises: the result holds the closest Plan, ``met_budget=False`` and a message saying why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from torch import nn

from quantbalance.args import checked
from quantbalance.errors import ConfigError
from quantbalance.hardware import detect
from quantbalance.lowering import targeting
from quantbalance.progress import phase
from quantbalance.search.config import SearchConfig
from quantbalance.search.phases import (
    assemble_result,
    build_problem,
    costs_phase,
    front_phase,
    holdout_phase,
    sensitivity_phase,
    verify_phase,
)
from quantbalance.search.result import Budget, SearchResult
from quantbalance.search.setup import SearchSetup

__all__ = ["Budget", "SearchConfig", "SearchResult", "search"]


@checked
def search(
    model: nn.Module,
    source: Any,
    budget: Budget,
    *,
    holdout: Any = None,
    sensitivity_source: Any = None,
    config: SearchConfig | None = None,
    **overrides: Any,
) -> SearchResult:
    """Find the per-layer precision that meets ``budget`` at the least cost.

    Args:
        model: the float model (not modified).
        source: the search split: a ``Task`` or ``(calib_data, eval_fn)``.
        budget: a :class:`Budget`.
        holdout: held-out split: a ``Task`` or an eval function; the budget is judged on it.
        sensitivity_source: a cheaper ``Task``/tuple for the single-layer measurements
            (e.g. fewer evaluation samples); default the search split.
        config: the options (:class:`SearchConfig`: candidates, algorithm, max_evals,
            objective, cache_dir, executor, hardware, ...); default ``SearchConfig()``.
        **overrides: :class:`SearchConfig` fields laid over ``config`` (validated the same
            way), e.g. ``search(model, task, budget, max_evals=4)``.

    Returns:
        The :class:`SearchResult`; ``info["config"]`` records every option
        (:meth:`SearchConfig.record`).

    Raises:
        ConfigError: an unknown or invalid option (naming it and the accepted ones), or a
            ``hardware`` other than this machine's with a parallel ``executor``.
    """
    cfg = (config or SearchConfig()).merged(overrides)
    with targeting(cfg.hardware) as target:
        if target != detect().int8_target and cfg.executor not in (None, "serial"):
            raise ConfigError(
                f"hardware={cfg.hardware!r} differs from this machine's int8 target "
                f"({detect().int8_target!r}) and cannot be sent to executor={cfg.executor!r}: "
                "run the search with executor='serial', or on a machine of the target's kind"
            )
        return _run(model, source, budget, holdout, sensitivity_source, cfg)


def _run(
    model: nn.Module,
    source: Any,
    budget: Budget,
    holdout: Any,
    sensitivity_source: Any,
    cfg: SearchConfig,
) -> SearchResult:
    """The phases in order (``search.phases``), each announced and timed."""
    times: dict[str, float] = {}
    step = _clock(cfg.progress, times)
    with step("setup", "setup: float reference"):
        setup = SearchSetup.build(model, source, budget, holdout, cfg)
    with step("sensitivity", "single-layer sensitivity"):
        sens, sens_evaluator = sensitivity_phase(setup, model, sensitivity_source)
    with step("costs", "costs (bytes, latency)"):
        costs, preset_choice = costs_phase(setup)
    with step("verify", "solve and verify"):
        problem = build_problem(setup, sens, costs)
        verifier = verify_phase(setup, problem, costs)
    with step("front", "Pareto front and presets"):
        preset_points = front_phase(setup, verifier, problem, preset_choice)
    with step("holdout", "held-out check"):
        outcome = holdout_phase(setup, verifier, preset_points)
    return assemble_result(setup, model, verifier, outcome, sens, sens_evaluator, costs, times)


def _clock(
    enabled: bool, times: dict[str, float]
) -> Callable[[str, str], AbstractContextManager[None]]:
    """A block per phase: announces it (one log line each; see ``progress``) and records its
    seconds in ``times[key]``."""
    t_start = time.perf_counter()
    count = [0]

    @contextmanager
    def step(key: str, name: str) -> Iterator[None]:
        count[0] += 1
        t0 = time.perf_counter()
        if enabled:
            phase("search", count[0], 6, name, t0 - t_start)
        yield
        times[key] = time.perf_counter() - t0

    return step
