"""Where the search's measurements come from: the data source, and cached evaluation of Plans.

A *source* is a ``Task`` or a ``(calib_data, eval_fn)`` tuple; :func:`as_source` turns either
into a :class:`Source`, whose ``eval_id`` names the eval function *and* fingerprints its code
and data (``search.fingerprint``). :class:`PlanEvaluator` measures the float model's reference
metrics first, in every run (never from the cache: they are part of every cache key, so a
changed evaluation cannot be answered with old figures), then quantizes a model with a Plan,
evaluates it with the real eval function (search split, and the held-out split when there is
one), measures its exact bytes, and caches all of it on disk, keeping a log of every evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.evaluate import check_metrics, model_nbytes
from quantbalance.evaluate.guards import layer_numerics, problems
from quantbalance.plan import Plan
from quantbalance.quantize import quantize
from quantbalance.search.cache import Cache, fn_identity
from quantbalance.search.fingerprint import Fingerprint, eval_fingerprint

log = logging.getLogger(__name__)

EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class Source:
    """Calibration data, the eval function, and which metric the budget protects.

    Attributes:
        calib_data: calibration batches (or None).
        eval_fn: ``model -> dict[str, float]``.
        metric: the protected metric.
        higher_is_better: its direction.
        example_inputs: one batch with deployment shapes (latency, proxies).
        eval_id: identity of ``eval_fn`` for the cache: its name, then its fingerprint.
        name: label for reports.
        fingerprint: the eval function's fingerprint (code and data hashed, and what could not
            be looked into).
    """

    calib_data: list[Any] | None
    eval_fn: EvalFn
    metric: str
    higher_is_better: bool
    example_inputs: Any
    eval_id: str
    name: str = "model"
    fingerprint: Fingerprint | None = None

    @property
    def eval_name(self) -> str:
        """``eval_id`` without the fingerprint (stays the same when the evaluation changes)."""
        return self.eval_id.split("|fp:")[0]

    def evaluate(self, model: nn.Module, what: str = "eval function") -> dict[str, float]:
        """Run the eval function and validate its result (NaN or non-number -> ConfigError).

        Args:
            model: the model to evaluate.
            what: name used in errors.

        Returns:
            The metrics, which must include ``metric``.
        """
        got = check_metrics(self.eval_fn(model), f"{what} of {self.name!r}")
        if self.metric not in got:
            raise ConfigError(
                f"{what} of {self.name!r} returned {sorted(got)}, without the budget metric "
                f"{self.metric!r}; pass metric=one of those"
            )
        return got


def eval_identity(fn: Callable[..., Any], extra: Any = None) -> tuple[str, Fingerprint]:
    """Cache identity of an eval function: name, ``extra``, and the fingerprint of code and data.

    Args:
        fn: the eval function.
        extra: JSON-able facts that distinguish it (task name and info, the user's ``eval_id``).

    Returns:
        ``(eval_id, fingerprint)``.
    """
    fp = eval_fingerprint(fn)
    if fp.opaque:
        log.info(
            "the search cache cannot look into %s of the eval function %s; a change there is "
            "caught by the float model's reference metrics (also part of every cache key)",
            ", ".join(fp.opaque),
            getattr(fn, "__qualname__", type(fn).__name__),
        )
    return f"{fn_identity(fn, extra)}|fp:{fp.digest[:32]}", fp


def reference_key(reference: Mapping[str, float]) -> dict[str, float]:
    """Reference metrics as a cache-key part (12 significant digits: exact for a rerun).

    Args:
        reference: the float model's metrics.

    Returns:
        name -> rounded value, sorted by name.
    """
    return {k: float(f"{float(v):.12g}") for k, v in sorted(reference.items())}


def as_source(
    task_or: Any,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    eval_id: str | None = None,
) -> Source:
    """Build a :class:`Source` from a Task or a ``(calib_data, eval_fn[, example_inputs])`` tuple.

    Args:
        task_or: a ``Task`` (its ``primary_metric`` and ``higher_is_better`` are defaults), or a
            tuple whose eval function returns a dict of metrics.
        metric: the protected metric (required for a tuple whose eval returns several).
        higher_is_better: direction of ``metric`` (default True for tuples).
        eval_id: extra identity for the cache (use it when one eval function's data changes).

    Returns:
        The Source.
    """
    if hasattr(task_or, "evaluate_fn") and hasattr(task_or, "primary_metric"):
        t = task_or
        ident, fp = eval_identity(t.evaluate_fn, [t.name, t.info, eval_id])
        hib = t.higher_is_better if higher_is_better is None else higher_is_better
        calib = list(t.calib_data) if t.calib_data else None
        example = t.example_inputs if t.example_inputs is not None else (calib or [None])[0]
        m = metric or t.primary_metric
        return Source(calib, t.evaluate_fn, m, hib, example, ident, t.name, fp)
    if isinstance(task_or, tuple) and len(task_or) in (2, 3) and callable(task_or[1]):
        calib = list(task_or[0]) if task_or[0] is not None else None
        example = task_or[2] if len(task_or) == 3 else (calib[0] if calib else None)
        if example is None:
            raise ConfigError("a (calib_data, eval_fn) source needs calibration batches")
        fn = task_or[1]
        if metric is None:
            raise ConfigError(
                "with a (calib_data, eval_fn) source, pass metric='<name>' (the metric the budget "
                "protects) and higher_is_better"
            )
        hib = True if higher_is_better is None else higher_is_better
        ident, fp = eval_identity(fn, eval_id)
        return Source(calib, fn, metric, hib, example, ident, getattr(fn, "__name__", "model"), fp)
    raise ConfigError(
        f"expected a Task or a (calib_data, eval_fn) tuple, got {type(task_or).__name__}"
    )


def as_holdout(holdout: Any, src: Source) -> Source | None:
    """The held-out split as a Source sharing ``src``'s data, metric and direction.

    Args:
        holdout: None, a ``Task`` or an eval function.
        src: the search split.

    Returns:
        The Source, or None.
    """
    if holdout is None:
        return None
    if callable(holdout) and not hasattr(holdout, "evaluate_fn"):
        ident, fp = eval_identity(holdout, "holdout")
        return Source(
            src.calib_data,
            holdout,
            src.metric,
            src.higher_is_better,
            src.example_inputs,
            ident,
            src.name + " (held out)",
            fp,
        )
    h = as_source(holdout, src.metric, src.higher_is_better)
    return Source(
        src.calib_data,
        h.eval_fn,
        src.metric,
        src.higher_is_better,
        src.example_inputs,
        h.eval_id,
        h.name,
        h.fingerprint,
    )


def drop_of(value: float, reference: float, higher_is_better: bool, relative: bool) -> float:
    """Metric loss: positive when worse than the reference.

    Args:
        value: measured metric.
        reference: float model's metric.
        higher_is_better: direction.
        relative: divide by ``|reference|``.

    Returns:
        The drop (can be negative when the model got better).
    """
    d = reference - value if higher_is_better else value - reference
    return d / max(abs(reference), 1e-12) if relative else d


@dataclass
class PlanEvaluator:
    """Evaluates Plans (cached): metrics on the search split, exact bytes, held-out metrics.

    Attributes:
        model: the float model.
        source: the search split.
        holdout: the held-out split (or None).
        cache: the cache.
        keys: cache key parts (model hash, data hash, algorithm and its options).
        log: one record per evaluation, in order.
        notes: sentences for the report (an evaluation that changed since the last run).
    """

    model: nn.Module
    source: Source
    holdout: Source | None
    cache: Cache
    keys: dict[str, Any]
    progress: bool = False
    log: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _refs: dict[str, dict[str, float]] = field(default_factory=dict)

    def _quantize(self, plan: Plan) -> nn.Module:
        return quantize(self.model, plan, self.source.calib_data, progress=False)

    def numerics(self, plan: Plan, floor_db: float) -> dict[str, str]:
        """Layers of ``plan`` whose quantized output has NaN/inf or an SQNR below ``floor_db``.

        Judged on (up to two) calibration batches; see ``evaluate.guards``.

        Args:
            plan: the Plan.
            floor_db: the SQNR floor in dB.

        Returns:
            layer -> what is wrong (empty when nothing is).
        """
        if not any(s is not None for s in plan.layers.values()):
            return {}
        batches = (self.source.calib_data or [self.source.example_inputs])[:2]
        got = problems(layer_numerics(self.model, self._quantize(plan), batches, floor_db))
        for n, p in got.items():
            log.warning("chosen Plan %s, layer %s: %s", plan.name, n, p)
        return got

    def _src(self, split: str) -> Source:
        src = self.source if split == "search" else self.holdout
        if src is None:
            raise ConfigError(f"split {split!r}: no held-out split was given")
        return src

    def reference(self, split: str = "search") -> dict[str, float]:
        """Metrics of the float model on a split, measured once per run (never from the cache).

        The first call for a split also records it in the cache and adds a note when the
        evaluation differs from the previous run's (see ``Cache.remember_evaluation``).

        Args:
            split: ``search`` or ``holdout``.

        Returns:
            The metrics.
        """
        if split not in self._refs:
            src = self._src(split)
            ref = src.evaluate(self.model, "eval function (float model)")
            self._refs[split] = ref
            ident = {"model": self.keys.get("model"), "data": self.keys.get("data")}
            parts = src.fingerprint.parts if src.fingerprint else {}
            note = self.cache.remember_evaluation(
                {**ident, "eval": src.eval_name}, reference_key(ref), parts
            )
            if note:
                log.warning("%s", note)
                self.notes.append(note)
        return self._refs[split]

    def eval_key(self, split: str) -> dict[str, Any]:
        """Cache-key part of a split's evaluation: fingerprint and this run's reference.

        Args:
            split: ``search`` or ``holdout``.

        Returns:
            ``{"eval": ..., "reference": ...}``.
        """
        return {"eval": self._src(split).eval_id, "reference": reference_key(self.reference(split))}

    def evaluate(self, plan: Plan, purpose: str, split: str = "search") -> dict[str, Any]:
        """Quantize with ``plan`` and evaluate it (cached), logging the evaluation.

        Args:
            plan: the Plan.
            purpose: why (``verify``, ``front``, ``preset``, ``holdout``) for the log.
            split: ``search`` or ``holdout``.

        Returns:
            ``{"metrics": {...}, "bytes": int, "seconds": float, "cached": bool}``.
        """
        return self.evaluate_splits(plan, {split: purpose})[split]

    def evaluate_splits(self, plan: Plan, purposes: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Quantize with ``plan`` once and evaluate it on several splits (each cached).

        A uniform preset is judged on both splits; one quantization serves both.

        Args:
            plan: the Plan.
            purposes: split (``search``/``holdout``) -> purpose for the log.

        Returns:
            split -> the record :meth:`evaluate` returns.
        """
        q: nn.Module | None = None
        out = {}
        for split, purpose in purposes.items():
            src = self._src(split)
            key = {**self.keys, "plan": plan.model_dump(mode="json"), **self.eval_key(split)}
            key["plan"].pop("name", None)
            got = self.cache.get("eval", key)
            cached = got is not None
            if got is None:
                t0 = time.perf_counter()
                q = self._quantize(plan) if q is None else q
                what = f"eval function (plan {plan.name!r}, {split} split)"
                got = {
                    "metrics": src.evaluate(q, what),
                    "bytes": model_nbytes(q),
                    "seconds": time.perf_counter() - t0,
                }
                self.cache.put("eval", key, got)
            rec = {"plan": plan.name, "purpose": purpose, "split": split, "cached": cached, **got}
            self.log.append(rec)
            m = got["metrics"].get(src.metric, math.nan)
            log.info(
                "%s %s (%s): %s=%.6g, %d bytes",
                purpose,
                plan.name,
                split,
                src.metric,
                m,
                got["bytes"],
            )
            out[split] = rec
        return out
