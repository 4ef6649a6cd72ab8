"""qb.compare: metrics of the float and quantized model side by side, sizes and per-layer SQNR."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from quantbalance.args import checked
from quantbalance.errors import ConfigError
from quantbalance.evaluate.guards import SQNR_FLOOR_DB, layer_numerics, problems
from quantbalance.evaluate.size import model_nbytes
from quantbalance.nn import QuantModule
from quantbalance.transform import coverage, fold_batchnorm, split_attention

log = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class Comparison:
    """Result of :func:`compare`.

    Attributes:
        float_metrics: metrics of the float model.
        quant_metrics: metrics of the quantized model.
        deltas: quantized minus float, per metric.
        float_bytes: exact bytes of the float model.
        quant_bytes: exact bytes of the quantized model.
        layer_sqnr: per-layer output SQNR (dB) on the example batches.
        coverage: "quantized N of M weight layers (P % of weights)".
        left_float: float weight layer -> why (``"by plan"`` or why it has no quantized form).
        numeric_problems: layers whose quantized output has NaN/inf or an SQNR below the floor
            (layer -> what is wrong; see ``evaluate.guards``).
    """

    float_metrics: dict[str, float]
    quant_metrics: dict[str, float]
    deltas: dict[str, float]
    float_bytes: int
    quant_bytes: int
    layer_sqnr: dict[str, float] = field(default_factory=dict)
    coverage: str = ""
    left_float: dict[str, str] = field(default_factory=dict)
    numeric_problems: dict[str, str] = field(default_factory=dict)

    @property
    def compression(self) -> float:
        """float bytes / quantized bytes."""
        return self.float_bytes / max(self.quant_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (infinite SQNR as None)."""
        d = asdict(self)
        d["layer_sqnr"] = {k: (None if math.isinf(v) else v) for k, v in self.layer_sqnr.items()}
        d["compression"] = self.compression
        return d


def check_metrics(metrics: Any, who: str = "eval function") -> dict[str, float]:
    """Validate an eval function's result: a dict of finite numbers.

    Args:
        metrics: what the eval function returned.
        who: name used in errors.

    Returns:
        The metrics as floats.
    """
    if not isinstance(metrics, dict) or not metrics:
        raise ConfigError(
            f"{who} must return a non-empty dict of metric name -> number, "
            f"got {type(metrics).__name__}"
        )
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{who}: metric {k!r} is {v!r}, not a number") from None
        if not math.isfinite(f):
            raise ConfigError(f"{who}: metric {k!r} is {f}, not a finite number")
        out[str(k)] = f
    return out


@checked
def compare(
    float_model: nn.Module,
    qmodel: nn.Module,
    task_or_eval_fn: Any,
    batches: list[Any] | None = None,
    progress: bool = False,
    sqnr_floor_db: float = SQNR_FLOOR_DB,
) -> Comparison:
    """Evaluate both models and compare them.

    Args:
        float_model: the float model.
        qmodel: its quantized copy.
        task_or_eval_fn: a ``Task`` (uses ``task.evaluate`` and its cached float reference) or a
            function ``model -> dict[str, float]``.
        batches: inputs for per-layer SQNR (default: the task's ``example_inputs``).
        progress: show progress bars.
        sqnr_floor_db: a layer whose output SQNR is below this (dB) is listed in
            ``numeric_problems``, as is one whose output has NaN/inf.

    Returns:
        A :class:`Comparison`.
    """
    if isinstance(task_or_eval_fn, nn.Module):
        raise ConfigError(
            f"task_or_eval_fn is a model ({type(task_or_eval_fn).__name__}); give a Task or an "
            "eval function model -> dict of metrics"
        )
    if hasattr(task_or_eval_fn, "evaluate") and hasattr(task_or_eval_fn, "reference"):
        task = task_or_eval_fn
        fm = check_metrics(
            task.reference if float_model is task.model else task.evaluate(float_model)
        )
        qm = check_metrics(task.evaluate(qmodel))
        if batches is None:
            batches = [task.example_inputs]
    elif callable(task_or_eval_fn):
        fm = check_metrics(task_or_eval_fn(float_model))
        qm = check_metrics(task_or_eval_fn(qmodel))
    else:
        raise ConfigError("task_or_eval_fn must be a Task or a callable model -> dict of metrics")
    deltas = {k: qm[k] - fm[k] for k in fm if k in qm}
    names = [n for n, m in qmodel.named_modules() if isinstance(m, QuantModule)]
    missing = [n for n in names if n not in dict(float_model.named_modules())]
    if missing:
        raise ConfigError(
            f"qmodel has quantized layers {missing[:5]} that float_model lacks: give the float "
            "model qmodel was quantized from"
        )
    info = getattr(qmodel, "qb_info", None)
    numerics = {}
    if batches:
        # Folded layers output what conv+BN did: compare against the float model folded alike.
        ref = float_model
        if info is not None and (info.folded or info.attention):
            ref = copy.deepcopy(float_model).eval()
            fold_batchnorm(ref)
            split_attention(ref)
        numerics = layer_numerics(ref, qmodel, batches, sqnr_floor_db, names, progress)
    bad = problems(numerics)
    for n, p in bad.items():
        log.warning("layer %s: %s", n, p)
    layer = {n: r.sqnr_db for n, r in numerics.items()}
    cov = info.coverage if info is not None and info.coverage.total else coverage(qmodel)
    return Comparison(
        fm, qm, deltas, model_nbytes(float_model), model_nbytes(qmodel), layer,
        cov.summary(), cov.left_float(), bad,
    )  # fmt: skip
