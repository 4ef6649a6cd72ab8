"""What a search takes and gives: the :class:`Budget` and the :class:`SearchResult`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from quantbalance.errors import ConfigError
from quantbalance.formats.config import FrozenConfig
from quantbalance.io import json_safe
from quantbalance.plan import Plan
from quantbalance.search.costs import CostTable
from quantbalance.search.pareto import PlanPoint
from quantbalance.search.sensitivity import SensitivityTable

#: The limits a :class:`Budget` takes exactly one of.
LIMITS = ("max_drop", "max_bytes", "max_latency_ms")


def check_one_limit(
    given: Sequence[str], names: Sequence[str] = LIMITS, example: str = "Budget(max_drop=0.01)"
) -> None:
    """The budget check: exactly one limit (:class:`Budget` runs it; the CLI with its flags).

    Args:
        given: the limits given, as spelled in ``names``.
        names: how the caller spells :data:`LIMITS` (the CLI: ``--max-drop`` ...).
        example: a valid call, for the message.
    """
    if len(given) != 1:
        raise ConfigError(
            f"give exactly one of {', '.join(names)} (got {', '.join(given) or 'none'}); "
            f"e.g. {example}"
        )


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
        check_one_limit([k for k in LIMITS if getattr(self, k) is not None])
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
        return json_safe(d)


