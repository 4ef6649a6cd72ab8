"""qb.sensitivity: what quantizing one layer, alone, costs in the metric, plus cheap proxies.

For every quantizable layer and every candidate spec the layer is quantized *alone* (all other
layers float) and the real eval function is run: that metric change is what the search adds
up. Two proxies (see ``search.proxies``: output SQNR and a Fisher-style estimate) come from
one calibration pass, so large models can be screened before the expensive measurements
(``measure=k``). With round to nearest one quantized module is swapped into a folded copy of
the model; other algorithms go through ``quantize`` with a one-layer Plan. Results are cached
on disk by (model hash, layer, spec, algorithm options in force, data hash, eval-function
fingerprint, float reference metrics of this run).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from quantbalance.algorithms import parse_algorithm
from quantbalance.algorithms.base import options_in_force
from quantbalance.args import checked
from quantbalance.lowering import plan_target
from quantbalance.plan import LayerSpec
from quantbalance.progress import steps
from quantbalance.search.cache import Cache, data_hash, default_cache_dir, model_hash
from quantbalance.search.candidates import (
    FLOAT,
    Candidates,
    Options,
    default_candidates,
    latency_candidates,
    layer_options,
    spec_key,
)
from quantbalance.search.config import SearchConfig
from quantbalance.search.evaluator import (
    PlanEvaluator,
    Source,
    as_source,
    drop_of,
    reference_key,
)
from quantbalance.search.executor import Executor, SerialExecutor, make_executor
from quantbalance.search.measure import Measure, measure_layer
from quantbalance.search.proxies import calibrate
from quantbalance.transform import fold_batchnorm, quantizable_layers, split_attention

__all__ = [
    "FLOAT",
    "Candidates",
    "Options",
    "SensitivityTable",
    "default_candidates",
    "latency_candidates",
    "layer_options",
    "run_sensitivity",
    "sensitivity",
    "spec_key",
]

log = logging.getLogger(__name__)


@dataclass
class SensitivityTable:
    """Per-layer, per-candidate measurements.

    Attributes:
        metric: the protected metric.
        higher_is_better: its direction.
        reference: float metrics on the same data.
        layers: layer -> type name, in model order.
        specs: layer -> key -> spec as JSON data (None = float).
        entries: layer -> key -> ``{"metrics", "measured", "sqnr_db", "fisher_db"}``
            (``metrics`` estimated from the proxy when ``measured`` is False).
    """

    metric: str
    higher_is_better: bool
    reference: dict[str, float]
    layers: dict[str, str]
    specs: dict[str, dict[str, Any]]
    entries: dict[str, dict[str, dict[str, Any]]]
    _slope: float | None = field(default=None, repr=False)

    def drop(
        self, layer: str, key: str, relative: bool = False, clamp: bool = True, floor: bool = False
    ) -> float:
        """Metric drop when only ``layer`` takes option ``key`` (0 for float).

        Args:
            layer: layer name.
            key: option key.
            relative: divide by the reference metric.
            clamp: clip improvements (noise) to 0.
            floor: never predict less than the proxy floor (see :meth:`proxy_floor`).

        Returns:
            The drop.
        """
        e = self.entries[layer].get(key)
        if key == FLOAT or e is None or e.get("metrics") is None:
            return 0.0
        d = drop_of(
            e["metrics"][self.metric], self.reference[self.metric], self.higher_is_better, relative
        )
        if floor:
            scale = abs(self.reference[self.metric]) if relative else 1.0
            d = max(d, self.proxy_floor() * noise_of(e) / max(scale, 1e-12))
        return max(d, 0.0) if clamp else d

    def proxy_floor(self, quantile: float = 0.25) -> float:
        """Drop per unit of proxy noise that (nearly) every measured pair exceeds.

        A metric measured on finite data has a noise floor (one image of accuracy), so a layer
        whose single-layer drop is lost in that noise would look free and many such layers
        would be stacked. The floor predicts for every pair at least ``slope × noise`` (noise
        = ``10^(-fisher_db/10)``), with ``slope`` the ``quantile`` of measured drop / noise over
        the pairs whose drop is measurably positive.

        Args:
            quantile: which quantile of the ratios.

        Returns:
            The slope (0 when nothing was measured).
        """
        if self._slope is None:
            ratios = []
            for e in (e for layer in self.entries.values() for e in layer.values()):
                n = noise_of(e)
                if e.get("measured") and n > 0 and e.get("fisher_db") is not None:
                    d = drop_of(
                        e["metrics"][self.metric],
                        self.reference[self.metric],
                        self.higher_is_better,
                        False,
                    )
                    if d > 0:
                        ratios.append(d / n)
            self._slope = float(np.quantile(ratios, quantile)) if ratios else 0.0
        return self._slope

    def ranking(self, key: str | None = None) -> list[str]:
        """Layers, most sensitive first (largest drop under ``key``, default the worst option)."""

        def worst(n: str) -> float:
            keys = [key] if key else list(self.entries[n])
            return max(
                (self.drop(n, k, clamp=False) for k in keys if k in self.entries[n]), default=0.0
            )

        return sorted(self.layers, key=worst, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with the proxy floor slope)."""
        d = asdict(self)
        d.pop("_slope", None)
        d["proxy_floor"] = self.proxy_floor()
        return d


@checked
def sensitivity(
    model: nn.Module,
    source: Any,
    layers: Sequence[str] | None = None,
    *,
    config: SearchConfig | None = None,
    **overrides: Any,
) -> SensitivityTable:
    """Metric change of quantizing each layer alone under each candidate, plus proxies.

    Args:
        model: the float model (not modified).
        source: a ``Task`` or ``(calib_data, eval_fn)``.
        layers: layer names (default: every quantizable layer).
        config: the options, as for ``search`` (:class:`SearchConfig`); this reads
            ``candidates`` (see :func:`layer_options`), ``algorithm`` (overrides every
            candidate's), ``cache_dir``, ``metric``/``higher_is_better``/``eval_id``,
            ``measure`` (True: real eval for every pair; False: proxies only; an integer k:
            real eval for k pairs spread over the proxy ranking, the others estimated from the
            proxy by a least-squares fit), ``progress`` and ``executor`` (where the
            single-layer measurements run).
        **overrides: :class:`SearchConfig` fields laid over ``config``.

    Returns:
        The :class:`SensitivityTable`.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> data = [torch.randn(4, 8)]
        >>> ev = lambda m: {"out": float(m(data[0]).detach().sum())}
        >>> t = sensitivity(net, (data, ev), cache_dir=None, metric="out", progress=False)
        >>> sorted(t.entries["0"])
        ['float', 'int8-weight', 'w3-g128', 'w4-g128', 'w8a8']
    """
    cfg = (config or SearchConfig()).merged(overrides)
    src = as_source(source, cfg.metric, cfg.higher_is_better, cfg.eval_id)
    cache = Cache(default_cache_dir() if cfg.cache_dir == "default" else cfg.cache_dir)
    base = copy.deepcopy(model).eval()
    fold_batchnorm(base)
    split_attention(base)
    names = list(layers) if layers is not None else list(quantizable_layers(base))
    options = layer_options(base, names, cfg.candidates, cfg.algorithm)
    mkey = model_hash(model)
    ev = PlanEvaluator(model, src, None, cache, {"model": mkey, "data": data_hash(src.calib_data)})
    reference = ev.reference()  # measured in every run, before any cache lookup
    return run_sensitivity(model, base, src, options, cache, mkey, reference, cfg.measure,
                           cfg.progress, make_executor(cfg.executor))  # fmt: skip


def run_sensitivity(
    model: nn.Module,
    base: nn.Module,
    src: Source,
    options: dict[str, Options],
    cache: Cache,
    mkey: str,
    reference: dict[str, float],
    measure: bool | int = True,
    progress: bool = True,
    executor: Executor | None = None,
) -> SensitivityTable:
    """The work of :func:`sensitivity` on prepared inputs (used by ``search``).

    Args:
        model: the float model.
        base: its BatchNorm-folded copy (modules are swapped in and out of it).
        src: the source.
        options: layer -> key -> spec.
        cache: the cache.
        mkey: the model hash.
        reference: float metrics.
        measure: see :func:`sensitivity`.
        progress: show progress bars.
        executor: where the measurements run (default: this process, one after another).

    Returns:
        The table.
    """
    dkey = data_hash(src.calib_data)
    opts = options_in_force()
    target = plan_target()  # the specs are quantized as lowered for it
    ekey = {"eval": src.eval_id, "reference": reference_key(reference)}
    pairs = [(n, k, s) for n, o in options.items() for k, s in o.items() if s is not None]

    def key(n: str, s: LayerSpec, with_eval: bool) -> dict[str, Any]:
        k = {"model": mkey, "layer": n, "spec": s.model_dump(mode="json"), "data": dkey}
        k["options"], k["target"] = opts, target
        return {**k, **ekey} if with_eval else k

    proxy = {(n, k): cache.get("proxy", key(n, s, False)) for n, k, s in pairs}
    got = {(n, k): cache.get("sens", key(n, s, True)) for n, k, s in pairs} if measure else {}
    state: dict[str, Any] = {}
    fast = {
        n: {k: s is None or parse_algorithm(s.algorithm) == ["rtn"] for k, s in o.items()}
        for n, o in options.items()
    }

    def job() -> Measure:
        if not state:
            batches = src.calib_data or [src.example_inputs]
            stats, q = calibrate(base, options, batches, progress)
            state["job"] = Measure(model, base, src, stats, q, fast, target)
        return state["job"]  # type: ignore[no-any-return]

    def record(n: str, k: str, s: LayerSpec, p: dict | None, value: dict | None) -> None:
        if p is not None:
            proxy[(n, k)] = cache.put("proxy", key(n, s, False), p)
        if value is not None:
            got[(n, k)] = cache.put("sens", key(n, s, True), value)

    def single(n: str, k: str, s: LayerSpec, evaluate: bool) -> None:
        record(n, k, s, *measure_layer(job(), (n, k, s, proxy[(n, k)] is None, evaluate)))

    for n, k, s in pairs:  # proxies not computed along with a measurement below
        if proxy[(n, k)] is None and not (measure is True and got.get((n, k)) is None):
            single(n, k, s, False)
    chosen = _tomeasure_layer(pairs, proxy, measure)
    todo = [(n, k, s) for n, k, s in pairs if (n, k) in chosen and got.get((n, k)) is None]
    run = executor or SerialExecutor()
    if todo and not isinstance(run, SerialExecutor):  # fanned out; results cached here
        items = [(n, k, s, proxy[(n, k)] is None, True) for n, k, s in todo]
        log.info("sensitivity: %d measurements on %d workers", len(items), run.workers)
        for (n, k, s, _, _), res in zip(items, run.map(measure_layer, items, job()), strict=True):
            record(n, k, s, *res)
        todo = []
    for n, k, s in steps(todo, "search: sensitivity (layer x spec)", enabled=progress):
        single(n, k, s, True)
    return _table(src, base, options, reference, proxy, got, chosen)


def noise_of(p: dict[str, Any] | None) -> float:
    """Relative output-noise energy of a pair from its Fisher proxy (0 when unknown)."""
    db = (p or {}).get("fisher_db")
    return 0.0 if db is None else 10 ** (-db / 10)


def _tomeasure_layer(pairs: list[tuple], proxy: dict, measure: bool | int) -> set[tuple[str, str]]:
    if measure is True:
        return {(n, k) for n, k, _ in pairs}
    if measure is False or measure <= 0:
        return set()
    ranked = sorted(((n, k) for n, k, _ in pairs), key=lambda p: noise_of(proxy[p]), reverse=True)
    k = min(int(measure), len(ranked))
    idx = {round(i * (len(ranked) - 1) / max(k - 1, 1)) for i in range(k)}
    return {ranked[i] for i in idx}


def _table(
    src: Source,
    base: nn.Module,
    options: dict[str, Options],
    reference: dict,
    proxy: dict,
    got: dict,
    chosen: set,
) -> SensitivityTable:
    ref = reference[src.metric]
    sign = -1.0 if src.higher_is_better else 1.0
    fit = [
        (noise_of(proxy[p]), max(0.0, sign * (got[p]["metrics"][src.metric] - ref)))
        for p in chosen
        if got.get(p)
    ]
    den = sum(x * x for x, _ in fit)
    slope = sum(x * y for x, y in fit) / den if den > 0 else 0.0
    entries: dict[str, dict[str, dict[str, Any]]] = {}
    for n, opts in options.items():
        entries[n] = {}
        for k, s in opts.items():
            if s is None:
                entries[n][k] = {
                    "metrics": dict(reference),
                    "measured": True,
                    "sqnr_db": None,
                    "fisher_db": None,
                }
                continue
            p = proxy.get((n, k)) or {}
            g = got.get((n, k))
            metrics = g["metrics"] if g else {src.metric: ref + sign * slope * noise_of(p)}
            entries[n][k] = {"metrics": metrics, "measured": g is not None, **p}
    return SensitivityTable(
        metric=src.metric,
        higher_is_better=src.higher_is_better,
        reference=dict(reference),
        layers={n: type(base.get_submodule(n)).__name__ for n in options},
        specs={
            n: {k: s and s.model_dump(mode="json") for k, s in o.items()}
            for n, o in options.items()
        },
        entries=entries,
    )
