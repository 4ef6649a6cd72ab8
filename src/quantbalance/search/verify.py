"""The verification loop: solve on predictions, evaluate for real, correct, choose.

Drop budgets: the predicted-drop limit starts at the budget. After each evaluation it is
rescaled by the observed ratio measured/predicted (too optimistic: tighten; comfortably met:
loosen), then bisected between the largest limit whose Plan met the budget and the smallest
whose Plan did not. When the solver returns a Plan that already failed, the Plan is repaired
greedily: its layer with the largest predicted drop is upgraded to a less damaging candidate.
Size and latency budgets: the best predicted Plans are evaluated in turn (each found Plan is
excluded from the next solve) and the best measured one is kept.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from quantbalance.lowering import plan_target
from quantbalance.plan import Plan
from quantbalance.progress import log as progress_log
from quantbalance.search.costs import CostTable
from quantbalance.search.evaluator import PlanEvaluator, Source, drop_of
from quantbalance.search.pareto import PlanPoint
from quantbalance.search.solver import Problem, Solution, solve

log = logging.getLogger(__name__)


def solution_plan(sol: Solution, names: list[str], options: dict[str, dict], name: str) -> Plan:
    """The Plan of a solver solution (float layers listed as None), for this machine's int8
    target: the one ``qb.quantize`` evaluated it with (``Plan.hardware``).

    Args:
        sol: the solution.
        names: layer names in order.
        options: layer -> key -> spec.
        name: the Plan's name.

    Returns:
        The Plan.
    """
    layers = {n: options[n][k] for n, k in zip(names, sol.keys, strict=True)}
    return Plan(name=name, layers=layers, hardware=plan_target())


class Verifier:
    """Holds the searched points and runs the verification loop.

    Args:
        problem: the integer program's data.
        options: layer -> key -> spec.
        ev: the plan evaluator.
        costs: the cost table.
        budget: the ``Budget``.
        reference: float metrics on the search split.
        src: the search split's source.
        progress: show a progress bar.
    """

    def __init__(
        self,
        problem: Problem,
        options: dict[str, dict],
        ev: PlanEvaluator,
        costs: CostTable,
        budget: Any,
        reference: dict[str, float],
        src: Source,
        progress: bool = True,
    ) -> None:
        self.problem, self.options, self.ev, self.costs = problem, options, ev, costs
        self.budget, self.reference, self.src, self.progress = budget, reference, src, progress
        self.points: dict[tuple[int, ...], PlanPoint] = {}
        self.n_evals = 0
        self.objective = "bytes"
        self._bar: Any = None
        self._bar_done = 0

    def _drop(self, metrics: dict[str, float], reference: dict[str, float]) -> float:
        m = self.src.metric
        return drop_of(metrics[m], reference[m], self.src.higher_is_better, self.budget.relative)

    def meets(self, p: PlanPoint) -> bool:
        """Whether a measured point meets the budget on the search split."""
        b = self.budget
        if b.kind == "drop":
            return p.drop is not None and p.drop <= b.limit + 1e-12
        return p.cost("bytes" if b.kind == "bytes" else "latency") <= b.limit

    def predicted(self, sol: Solution) -> PlanPoint:
        """The point of a solution (created, unmeasured, on first sight)."""
        key = tuple(sol.choice)
        if key not in self.points:
            name = f"mixed-{len(self.points) + 1:02d}"
            choice = dict(zip(self.problem.layers, sol.keys, strict=True))
            self.points[key] = PlanPoint(
                name,
                "front",
                solution_plan(sol, self.problem.layers, self.options, name),
                self.costs.plan_bytes(choice),
                self.costs.plan_latency(choice),
                sol.totals["drop"],
                choice=choice,
            )
        return self.points[key]

    def measure_point(self, p: PlanPoint, purpose: str) -> PlanPoint:
        """Evaluate a point on the search split (its bytes become the measured ones)."""
        if not p.measured:
            rec = self.ev.evaluate(p.plan, purpose)
            p.metrics, p.nbytes = rec["metrics"], int(rec["bytes"])
            p.drop = self._drop(p.metrics, self.reference)
            p.kind = purpose
            self.n_evals += purpose == "verify"
            if self._bar is not None:
                self._bar.update(1)  # a disabled tqdm bar does not count: count here
                self._bar_done += 1
                if self._bar.disable and self.progress:  # off a terminal: a log line each
                    progress_log.info("search: verify: %d of at most %s evaluations",
                                      self._bar_done, self._bar.total)  # fmt: skip
        return p

    def holdout(self, p: PlanPoint) -> PlanPoint:
        """Evaluate a point on the held-out split."""
        if p.holdout_metrics is None:
            rec = self.ev.evaluate(p.plan, "holdout", split="holdout")
            p.holdout_metrics = rec["metrics"]
            p.holdout_drop = self._drop(p.holdout_metrics, self.ev.reference("holdout"))
        return p

    def preset_point(
        self, name: str, plan: Plan, choice: dict[str, str], holdout: bool = False
    ) -> PlanPoint:
        """Evaluate a uniform preset and place it on the axes.

        Args:
            name: the preset's name.
            plan: its Plan.
            choice: layer -> option key of the preset.
            holdout: also judge it on the held-out split (one quantization for both).

        Returns:
            The measured point.
        """
        purposes = {"search": "preset"} | ({"holdout": "holdout"} if holdout else {})
        recs = self.ev.evaluate_splits(plan, purposes)
        rec = recs["search"]
        p = PlanPoint(
            name,
            "preset",
            plan,
            int(rec["bytes"]),
            self.costs.plan_latency(choice),
            None,
            rec["metrics"],
            self._drop(rec["metrics"], self.reference),
            choice=choice,
        )
        if "holdout" in recs:
            p.holdout_metrics = recs["holdout"]["metrics"]
            p.holdout_drop = self._drop(p.holdout_metrics, self.ev.reference("holdout"))
        return p

    def run(self, max_evals: int, objective: str) -> None:
        """The verification loop (see the module doc).

        Args:
            max_evals: evaluations allowed.
            objective: what a drop budget minimises (``bytes`` or ``latency``).
        """
        self.objective = objective
        self._bar_done = 0
        self._bar = tqdm(
            total=max_evals, desc="verify", disable=not (self.progress and sys.stderr.isatty())
        )
        try:
            if self.budget.kind == "drop":
                self._run_drop(max_evals, objective)
            else:
                self._run_cost(max_evals, self.budget.kind)
        finally:
            self._bar.close()
            self._bar = None

    def _run_drop(self, max_evals: int, objective: str) -> None:
        D = self.budget.limit
        other = "latency" if objective == "bytes" else "bytes"  # ties: the other cost
        limit, lo, hi = D, None, None
        for _ in range(4 * max_evals):
            if self.n_evals >= max_evals:
                break
            sol = solve(self.problem, objective, {"drop": limit}, secondary=other)  # type: ignore[arg-type]
            if sol is None:
                sol = solve(self.problem, "drop", secondary=objective)  # type: ignore[arg-type]
                if sol is None or self.predicted(sol).measured:
                    break
            elif self.predicted(sol).measured:
                if self.meets(self.predicted(sol)):
                    if hi is None or hi - limit <= 0.02 * hi:
                        break
                    lo, limit = limit, (limit + hi) / 2
                    continue
                sol = self._repair(sol, objective)
                if sol is None:
                    break
            p = self.measure_point(self.predicted(sol), "verify")
            pred = max(sol.totals["drop"], 1e-12)
            assert p.drop is not None
            if self.meets(p):
                lo = limit if lo is None else max(lo, limit)
                limit = (
                    limit * min(4.0, D / max(p.drop, D / 4, 1e-12))
                    if hi is None
                    else (limit + hi) / 2
                )
            else:
                hi = limit if hi is None else min(hi, limit)
                new = D * pred / p.drop if p.drop > 0 else limit / 2
                if lo is not None and new <= lo:
                    new = (lo + hi) / 2
                limit = min(new, 0.999 * hi)
            if lo is not None and hi is not None and hi - lo <= 0.02 * hi:
                break

    def _repair(self, sol: Solution, objective: str) -> Solution | None:
        pr = self.problem
        choice = list(sol.choice)
        cost = pr.axis(objective)  # type: ignore[arg-type]
        for _ in range(4 * len(choice)):
            worst = None
            for i, c in enumerate(choice):
                better = [o for o in range(len(pr.keys[i])) if pr.drop[i][o] < pr.drop[i][c]]
                if better and (worst is None or pr.drop[i][c] > worst[0]):
                    worst = (pr.drop[i][c], i, better)
            if worst is None:
                return None
            _, i, better = worst
            key = pr.keys[i][min(better, key=lambda o: (cost[i][o], pr.drop[i][o]))]
            for j in next((g for g in pr.groups if i in g), [i]):
                choice[j] = pr.keys[j].index(key)
            seen = self.points.get(tuple(choice))
            if seen is None or not seen.measured:
                keys = [pr.keys[i][c] for i, c in enumerate(choice)]
                return Solution(choice, keys, pr.totals(choice))
        return None

    def _run_cost(self, max_evals: int, axis: str) -> None:
        rest = self.costs.rest_bytes if axis == "bytes" else self.costs.rest_latency_ms
        limit = self.budget.limit - rest
        exclude: list[list[int]] = []
        first = None
        for _ in range(4 * max_evals):
            if self.n_evals >= max_evals:
                break
            sol = solve(self.problem, "drop", {axis: limit}, exclude, secondary=axis)  # type: ignore[arg-type]
            if sol is None:
                break
            exclude.append(sol.choice)
            first = first if first is not None else sol.totals["drop"]
            if self.n_evals >= 2 and sol.totals["drop"] > 1.25 * first + 1e-12:
                break
            p = self.measure_point(self.predicted(sol), "verify")
            if axis == "bytes" and p.nbytes > self.budget.limit:  # prediction off (tied weights)
                limit -= p.nbytes - self.budget.limit
        if not any(p.measured for p in self.points.values()):
            sol = solve(self.problem, axis, secondary="drop")  # type: ignore[arg-type]
            if sol is not None:
                self.measure_point(self.predicted(sol), "verify")

    def choose(
        self, has_holdout: bool, presets: Sequence[PlanPoint] = ()
    ) -> tuple[PlanPoint, bool, str]:
        """The chosen point, whether it meets the budget, and why.

        Uniform presets compete too: a uniform Plan that meets the budget at a lower cost than
        every searched Plan is chosen (a Plan is a Plan).

        Args:
            has_holdout: judge drop budgets on the held-out split.
            presets: measured preset points.

        Returns:
            ``(point, met_budget, message)``.
        """
        b = self.budget
        obj = {"drop": self.objective, "bytes": "bytes", "latency": "latency"}[b.kind]
        measured = [p for p in self.points.values() if p.measured] + list(presets)
        feasible = [p for p in measured if self.meets(p)]
        if b.kind == "drop":
            feasible.sort(key=lambda p: (p.cost(obj), p.drop))
        else:
            feasible.sort(key=lambda p: (p.drop, p.cost(obj)))
        if not feasible:
            axis = {
                "drop": lambda p: p.drop,
                "bytes": lambda p: p.nbytes,
                "latency": lambda p: p.latency_ms,
            }[b.kind]
            closest = min(measured, key=axis)
            if has_holdout:
                self.holdout(closest)
            what = {
                "drop": f"drop {closest.drop:.4g}",
                "bytes": f"{closest.nbytes:,} bytes",
                "latency": f"{closest.latency_ms:.3g} ms",
            }[b.kind]
            return (
                closest,
                False,
                (
                    f"no Plan meets {b.describe()}: the closest evaluated Plan {closest.name} has "
                    f"{what}; relax the budget or add candidates"
                ),
            )
        if not has_holdout or b.kind != "drop":
            chosen = feasible[0]
            if has_holdout:
                self.holdout(chosen)
            where = "the held-out split" if has_holdout else "the search split (no held-out split)"
            return chosen, True, f"{chosen.name} meets {b.describe()}; metrics on {where}"
        first = feasible[0]
        for p in [first, *[q for q in feasible[1:] if q.drop < first.drop][:2]]:
            self.holdout(p)
            if p.holdout_drop is not None and p.holdout_drop <= b.limit + 1e-12:
                return (
                    p,
                    True,
                    (
                        f"{p.name} meets {b.describe()} on the held-out split "
                        f"(drop {p.holdout_drop:.4g}; search split {p.drop:.4g})"
                    ),
                )
        return (
            first,
            False,
            (
                f"{first.name} meets {b.describe()} on the search split (drop "
                f"{first.drop:.4g}) but not on the held-out split (drop "
                f"{first.holdout_drop:.4g}); use a tighter budget or more evaluation data"
            ),
        )
