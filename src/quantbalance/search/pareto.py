"""Points on the balance axes, Pareto fronts, and dominance checks.

A :class:`PlanPoint` is one Plan placed on the axes *metric drop* vs *bytes* and vs *latency*.
Its drop is measured (the real eval function ran) or predicted (sum of single-layer drops).
A point is on a front when no other point is at least as good on both axes and better on one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from quantbalance.plan import Plan

Cost = Literal["bytes", "latency"]


@dataclass
class PlanPoint:
    """One Plan on the balance axes.

    Attributes:
        name: short label (``mixed-03``, a preset name, ``float``).
        kind: ``chosen``, ``verify`` (evaluated by the search loop), ``front`` (budget sweep),
            ``preset`` or ``float``.
        plan: the Plan.
        nbytes: exact bytes (measured on the quantized model when evaluated, else predicted).
        latency_ms: predicted latency (measured per-layer kernels plus the rest of the model).
        predicted_drop: sum of single-layer drops (None for presets).
        metrics: metrics on the search split, when evaluated.
        drop: measured drop on the search split (budget units), when evaluated.
        holdout_metrics: metrics on the held-out split, when evaluated there.
        holdout_drop: drop on the held-out split.
        choice: layer -> option key, for searched plans.
    """

    name: str
    kind: str
    plan: Plan
    nbytes: int
    latency_ms: float
    predicted_drop: float | None = None
    metrics: dict[str, float] | None = None
    drop: float | None = None
    holdout_metrics: dict[str, float] | None = None
    holdout_drop: float | None = None
    choice: dict[str, str] | None = None
    on_front: dict[str, bool] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether the real eval function ran on this Plan."""
        return self.drop is not None

    @property
    def best_drop(self) -> float:
        """The measured drop if there is one, else the predicted one."""
        if self.drop is not None:
            return self.drop
        return self.predicted_drop if self.predicted_drop is not None else float("inf")

    def cost(self, axis: Cost) -> float:
        """Bytes or milliseconds."""
        return float(self.nbytes) if axis == "bytes" else self.latency_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the Plan as its JSON data)."""
        d = {k: v for k, v in self.__dict__.items() if k != "plan"}
        d["plan"] = self.plan.model_dump(mode="json")
        d["measured"] = self.measured
        return d


def dominates(a: PlanPoint, b: PlanPoint, axis: Cost, use_predicted: bool = True) -> bool:
    """Whether ``a`` is at least as good as ``b`` on drop and ``axis`` and better on one.

    Args:
        a: candidate dominator.
        b: the other point.
        axis: ``bytes`` or ``latency``.
        use_predicted: compare predicted drops of unmeasured points (else they never compare).

    Returns:
        True when ``a`` strictly dominates ``b``.
    """
    if not use_predicted and (not a.measured or not b.measured):
        return False
    da, db = a.best_drop, b.best_drop
    ca, cb = a.cost(axis), b.cost(axis)
    return da <= db and ca <= cb and (da < db or ca < cb)


def mark_fronts(points: Sequence[PlanPoint], axes: Sequence[Cost] = ("bytes", "latency")) -> None:
    """Set ``point.on_front[axis]`` for every point (in place).

    Args:
        points: the points (measured drops preferred over predicted ones).
        axes: the cost axes.
    """
    for axis in axes:
        for p in points:
            p.on_front[axis] = not any(dominates(q, p, axis) for q in points if q is not p)


def preset_dominance(
    presets: Sequence[PlanPoint], points: Sequence[PlanPoint], axes: Sequence[Cost] = ("bytes",)
) -> list[dict[str, str]]:
    """Measured points of the search's own front that a uniform preset strictly dominates.

    Call it after ``mark_fronts(points)`` (the searched Plans alone): the list says where the
    search's front fell short of a uniform Plan (the target is an empty list). The front the
    search returns is then marked again with the presets taking part, so those points drop off.

    Args:
        presets: the presets' points.
        points: the searched points, their ``on_front`` marked among themselves.
        axes: the axes to check.

    Returns:
        ``{"preset", "point", "axis"}`` for each dominated point.
    """
    out = []
    for axis in axes:
        for p in points:
            if not p.measured or not p.on_front.get(axis):
                continue
            for pre in presets:
                if dominates(pre, p, axis, use_predicted=False):
                    out.append({"preset": pre.name, "point": p.name, "axis": axis})
    return out


def spread(items: Sequence[Any], k: int) -> list[Any]:
    """``k`` items evenly spaced over ``items`` (ends included).

    Args:
        items: a sequence.
        k: how many.

    Returns:
        The picked items, in order.
    """
    if k <= 0 or not items:
        return []
    if k >= len(items):
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / max(k - 1, 1)) for i in range(k)})
    return [items[i] for i in idx]
