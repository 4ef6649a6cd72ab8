"""The Task contract: a float model, its calibration data and its evaluation function.

Everything that measures a model (``compare``, ``search``, ``benchmark``, the report) consumes a
``Task``. The bundled benchmark tasks (``quantbalance.tasks``) and a user's own model and data
(``quantbalance.tasks.from_model``) build the same object; the library never asks which one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class Task:
    """A float model with its calibration data and evaluation function.

    Attributes:
        name: a label for reports (``minilm``, ``hf:my-model``, ...).
        model: the float model, in eval mode. Batches follow ``calibration.batch.call_model``.
        calib_data: list of batches used for calibration (never for evaluation).
        example_inputs: one batch, for tracing/export/latency.
        evaluate_fn: ``evaluate_fn(model) -> dict[str, float]`` of the task's metrics.
        primary_metric: the metric the balance search protects.
        higher_is_better: direction of ``primary_metric``.
        info: free-form facts (sizes, sources) shown in reports.
        eval_slicer: optional ``eval_slicer(slice(lo, hi)) -> evaluate_fn`` building the same
            metric on another slice of the evaluation samples; held-out splits
            (``search.holdout.split_eval``) need it.
        n_eval_samples: how many evaluation samples ``eval_slicer`` can address (None: unknown).
    """

    name: str
    model: nn.Module
    calib_data: list[Any]
    example_inputs: Any
    evaluate_fn: EvalFn
    primary_metric: str
    higher_is_better: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    _reference: dict[str, float] | None = None
    eval_slicer: Callable[[slice], EvalFn] | None = None
    n_eval_samples: int | None = None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Evaluate ``model`` on this task.

        Args:
            model: the float model or a quantized copy of it.

        Returns:
            Metric name -> value.
        """
        return self.evaluate_fn(model)

    @property
    def reference(self) -> dict[str, float]:
        """The float model's metrics (computed once, then cached)."""
        if self._reference is None:
            self._reference = self.evaluate_fn(self.model)
        return self._reference
