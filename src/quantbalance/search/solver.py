"""The budgeted choice of one option per layer, as a 0/1 integer program (``scipy.optimize.milp``).

Variables ``x[l, o] ∈ {0, 1}``: layer ``l`` takes option ``o``. Every layer takes exactly one
option; the totals ``Σ x·drop``, ``Σ x·bytes``, ``Σ x·latency`` are additive predictions. One
total is minimised, the others may be bounded. Grouping constraints (layers that must share a
spec, e.g. fused q/k/v) are data: each group is a list of layer indices, and ``x[a, k] =
x[b, k]`` for every option key ``k``; keys that not every member offers are forbidden.
Previously found solutions can be excluded (no-good cuts), which enumerates the next best ones.

Example:
    >>> p = Problem(["a", "b"], [["f", "q"], ["f", "q"]], drop=[[0, 0.1], [0, 0.3]],
    ...             nbytes=[[4, 1], [4, 1]], latency=[[1, 1], [1, 1]])
    >>> solve(p, minimize="bytes", limits={"drop": 0.2}).keys
    ['q', 'f']
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from quantbalance.errors import ConfigError

Axis = Literal["drop", "bytes", "latency"]
AXES: tuple[Axis, ...] = ("drop", "bytes", "latency")
_TIE = 1e-6  # weight of the secondary objective (ties broken towards less drop / fewer bytes)


@dataclass
class Problem:
    """Per-layer options and their predicted effects.

    Attributes:
        layers: layer names.
        keys: option keys per layer (e.g. ``["float", "int8-weight", "w4-g128"]``).
        drop: predicted metric drop per layer and option (same nesting as ``keys``).
        nbytes: bytes per layer and option.
        latency: milliseconds per layer and option.
        groups: lists of layer indices that must take the same option key.
    """

    layers: list[str]
    keys: list[list[str]]
    drop: list[list[float]]
    nbytes: list[list[float]]
    latency: list[list[float]]
    groups: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.layers)
        for name in ("keys", "drop", "nbytes", "latency"):
            v = getattr(self, name)
            if len(v) != n or any(len(v[i]) != len(self.keys[i]) for i in range(n)):
                raise ConfigError(f"Problem.{name} must have one entry per layer and option")
        for g in self.groups:
            bad = [i for i in g if not 0 <= i < n]
            if bad:
                raise ConfigError(f"group {g} names layer indices {bad} outside 0..{n - 1}")

    def axis(self, name: Axis) -> list[list[float]]:
        """Values of one axis (``drop``, ``bytes`` or ``latency``)."""
        return {"drop": self.drop, "bytes": self.nbytes, "latency": self.latency}[name]

    def totals(self, choice: Sequence[int]) -> dict[str, float]:
        """Additive totals of a choice.

        Args:
            choice: option index per layer.

        Returns:
            ``{"drop", "bytes", "latency"}`` sums.
        """
        return {a: float(sum(self.axis(a)[i][c] for i, c in enumerate(choice))) for a in AXES}


@dataclass
class Solution:
    """One option per layer and its predicted totals."""

    choice: list[int]
    keys: list[str]
    totals: dict[str, float]


def solve(
    problem: Problem,
    minimize: Axis,
    limits: dict[str, float] | None = None,
    exclude: Sequence[Sequence[int]] = (),
    secondary: Axis | None = None,
    time_limit: float = 20.0,
) -> Solution | None:
    """Minimise one predicted total subject to upper bounds on others.

    Args:
        problem: the options.
        minimize: ``drop``, ``bytes`` or ``latency``.
        limits: axis -> upper bound on its total (e.g. ``{"drop": 0.01}``).
        exclude: choices that may not be returned again (no-good cuts).
        secondary: tie-breaking axis (default: ``drop``, or ``bytes`` when minimising drop).
        time_limit: seconds for the MILP solver.

    Returns:
        The optimal Solution, or None when no choice satisfies the limits.
    """
    limits = dict(limits or {})
    for a in [minimize, *limits]:
        if a not in AXES:
            raise ConfigError(f"axis {a!r} is unknown; accepted: {', '.join(AXES)}")
    sec = secondary or ("bytes" if minimize == "drop" else "drop")
    offsets = np.cumsum([0] + [len(k) for k in problem.keys])
    n = int(offsets[-1])
    flat = {a: np.array([v for row in problem.axis(a) for v in row], dtype=float) for a in AXES}
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(row: np.ndarray, low: float, high: float) -> None:
        rows.append(row)
        lo.append(low)
        hi.append(high)

    for i in range(len(problem.layers)):
        row = np.zeros(n)
        row[offsets[i] : offsets[i + 1]] = 1
        add(row, 1, 1)
    upper = np.ones(n)
    for g in problem.groups:
        shared = set.intersection(*(set(problem.keys[i]) for i in g)) if g else set()
        for i in g:
            for o, k in enumerate(problem.keys[i]):
                if k not in shared:
                    upper[offsets[i] + o] = 0
        for a, b in itertools.pairwise(g):
            for k in shared:
                row = np.zeros(n)
                row[offsets[a] + problem.keys[a].index(k)] = 1
                row[offsets[b] + problem.keys[b].index(k)] = -1
                add(row, 0, 0)
    for a, bound in limits.items():
        scale = _scale(flat[a])
        add(flat[a] / scale, -np.inf, bound / scale + 1e-9)
    for sol in exclude:
        row = np.zeros(n)
        for i, c in enumerate(sol):
            row[offsets[i] + c] = 1
        add(row, -np.inf, len(sol) - 1)
    cost = flat[minimize] / _scale(flat[minimize]) + _TIE * flat[sec] / _scale(flat[sec])
    res = milp(
        cost,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.ones(n),
        bounds=Bounds(np.zeros(n), upper),
        options={"time_limit": time_limit},
    )
    if res.x is None:
        return None
    x = np.round(res.x).astype(int)
    choice = [int(np.argmax(x[offsets[i] : offsets[i + 1]])) for i in range(len(problem.layers))]
    totals = problem.totals(choice)
    for a, bound in limits.items():
        if totals[a] > bound + 1e-9 * max(1.0, abs(bound)):
            return None
    return Solution(choice, [problem.keys[i][c] for i, c in enumerate(choice)], totals)


def _scale(v: np.ndarray) -> float:
    m = float(np.abs(v).sum()) if v.size else 0.0
    return m if m > 0 else 1.0


def sweep(
    problem: Problem, axis: Axis, n_points: int = 12, minimize: Axis = "drop"
) -> list[Solution]:
    """Solutions along a budget sweep: minimise ``minimize`` with ``axis`` bounded at
    ``n_points`` evenly spaced values between its smallest and largest attainable totals.

    Args:
        problem: the options.
        axis: the swept budget axis (``bytes`` or ``latency``).
        n_points: number of budget values.
        minimize: the minimised axis (default the predicted drop).

    Returns:
        Distinct solutions, in increasing ``axis`` total.
    """
    low = solve(problem, minimize=axis)
    high = solve(problem, minimize=minimize)
    if low is None or high is None:
        return []
    a, b = low.totals[axis], max(high.totals[axis], low.totals[axis])
    out: dict[tuple[int, ...], Solution] = {}
    for t in np.linspace(a, b, max(n_points, 2)):
        s = solve(problem, minimize=minimize, limits={axis: float(t)}, secondary=axis)
        if s is not None:
            out.setdefault(tuple(s.choice), s)
    return sorted(out.values(), key=lambda s: s.totals[axis])
