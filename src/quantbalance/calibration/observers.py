"""Observers: choose the range each block of a tensor is quantized over.

Every observer has ``update(x)`` (record statistics of one batch) and ``qparams(scheme)``
(scale and zero point in the scheme's parameter grid shape).

Non-finite values: ``±inf`` (e.g. the ``-inf``/``finfo.min`` of additive attention masks) are
excluded from the statistics and counted in ``n_nonfinite``; they never widen a range. A batch that
holds NaN, or holds nothing finite at all, raises :class:`NonFiniteError`.

==============  =========================================================  ==================
observer        range                                                      granularity
==============  =========================================================  ==================
``minmax``      running min / max                                          any
``ema``         exponential moving average of each batch's min / max       any
``percentile``  the p-th and (100-p)-th percentiles of a histogram         per-tensor
``mse``         clip range minimising the quantization MSE                 any
``entropy``     threshold minimising KL(P || Q) over a histogram (TensorRT) per-tensor
==============  =========================================================  ==================
"""

from __future__ import annotations

import math

import torch

from quantbalance.calibration.histogram import Histogram
from quantbalance.calibration.histogram_observers import (
    EntropyObserver,
    PercentileObserver,
    kl_threshold,
)
from quantbalance.calibration.observer_base import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
)
from quantbalance.errors import ConfigError
from quantbalance.formats import Scheme, granularity
from quantbalance.formats.granularity import Granularity, PerTensor
from quantbalance.formats.kinds import qparams_from_range

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "FixedObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "kl_threshold",
    "make_observer",
]

_MAX_STORED = 1 << 27  # values an exact (non-histogram) mse observer may keep


class MSEObserver(Observer):
    """Search a clip ratio per block that minimises the quantization mean squared error.

    Per-tensor: over a histogram of every batch (bin centres weighted by counts). Other
    granularities: exactly, over the stored values (meant for weights: one update).

    Args:
        granularity: blocks that share parameters.
        grid: number of candidate clip ratios in ``[min_ratio, 1]``.
        min_ratio: smallest clip ratio tried.
        n_bins: histogram bins (per-tensor mode).
    """

    name = "mse"

    def __init__(
        self,
        granularity: Granularity | None = None,
        grid: int = 100,
        min_ratio: float = 0.2,
        n_bins: int = 2048,
    ) -> None:
        super().__init__(granularity)
        if grid < 2 or not 0 < min_ratio < 1:
            raise ConfigError(f"grid={grid} must be >= 2 and min_ratio={min_ratio} in (0, 1)")
        self.grid = grid
        self.min_ratio = min_ratio
        self.hist = Histogram(n_bins) if isinstance(self.granularity, PerTensor) else None
        self._blocks: list[torch.Tensor] = []
        self._finite: list[torch.Tensor] = []

    def _observe(
        self, blocks: torch.Tensor, finite: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> None:
        super()._observe(blocks, finite, lo, hi)
        if self.hist is not None:
            self.hist.update(blocks[finite])
            return
        stored = sum(b.numel() for b in self._blocks) + blocks.numel()
        if stored > _MAX_STORED:
            raise ConfigError(
                f"mse observer with {self.granularity!r} would store {stored} values "
                f"(limit {_MAX_STORED}); use PerTensor() (histogram) for activations"
            )
        self._blocks.append(blocks)
        self._finite.append(finite)

    def range(self, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip range with the least quantization MSE for ``scheme``."""
        self._require_data()
        assert self.lo is not None and self.hi is not None
        ratios = torch.linspace(self.min_ratio, 1.0, self.grid)
        best_lo, best_hi = self.lo.clone(), self.hi.clone()
        if self.hist is not None:
            values = self.hist.centers().float().unsqueeze(0)
            weights = self.hist.counts.float().unsqueeze(0)
            self._search(values, weights, ratios, scheme, slice(None), best_lo, best_hi)
            return best_lo, best_hi
        n_rows = self._blocks[0].shape[0]
        width = sum(b.shape[1] for b in self._blocks)
        step = max(1, granularity.CHUNK_ELEMENTS // max(width, 1))  # rows searched at once (memory)
        for r0 in range(0, n_rows, step):
            rows = slice(r0, r0 + step)
            values = torch.cat([b[rows] for b in self._blocks], dim=1)
            weights = torch.cat([f[rows] for f in self._finite], dim=1).float()
            values = torch.where(weights > 0, values, 0.0)
            self._search(values, weights, ratios, scheme, rows, best_lo, best_hi)
        return best_lo, best_hi

    def _search(
        self,
        values: torch.Tensor,
        weights: torch.Tensor,
        ratios: torch.Tensor,
        scheme: Scheme,
        rows: slice,
        best_lo: torch.Tensor,
        best_hi: torch.Tensor,
    ) -> None:
        """Write the least-error clip range of the blocks ``rows`` into ``best_lo/best_hi``."""
        assert self.lo is not None and self.hi is not None
        lo0, hi0 = self.lo[rows], self.hi[rows]
        best_err = torch.full_like(lo0, math.inf)
        b_lo, b_hi = lo0.clone(), hi0.clone()
        for r in ratios:
            lo, hi = lo0 * r, hi0 * r
            err = _weighted_error(values, weights, lo, hi, scheme)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            b_lo = torch.where(better, lo, b_lo)
            b_hi = torch.where(better, hi, b_hi)
        best_lo[rows] = b_lo
        best_hi[rows] = b_hi


def _weighted_error(
    values: torch.Tensor, weights: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme
) -> torch.Tensor:
    """Per-block sum of ``weight · (x - Q(x))²`` for the range ``[lo, hi]``."""
    kind = scheme.format_kind
    if not kind.clipping:
        raise ConfigError(f"mse observer supports uniform and nf4 schemes, not {scheme.kind!r}")
    scale, zp = qparams_from_range(lo, hi, scheme)
    s = scale.unsqueeze(1)
    z = None if zp is None else zp.unsqueeze(1)
    _, deq = kind.round_trip(values, s, z, scheme)
    return ((values - deq) ** 2 * weights).sum(1)


class FixedObserver:
    """An observer that returns given parameters (to encode already-chosen codes).

    Args:
        scale: scales in the scheme's grid shape.
        zero_point: zero points in the grid shape, or None.
        granularity: the scheme's granularity.
    """

    def __init__(
        self, scale: torch.Tensor, zero_point: torch.Tensor | None, granularity: Granularity
    ) -> None:
        self.scale, self.zero_point, self.granularity = scale, zero_point, granularity

    def update(self, x: torch.Tensor) -> None:
        """Ignore data: the parameters are fixed."""

    def qparams(self, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed scale and zero point."""
        return self.scale, self.zero_point


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "ema": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, granularity: Granularity | None = None, **kwargs: float) -> Observer:
    """Build an observer by name.

    Args:
        name: one of ``minmax``, ``ema``, ``percentile``, ``mse``, ``entropy``.
        granularity: blocks that share parameters.
        **kwargs: observer options (e.g. ``percentile=99.9``).

    Returns:
        A fresh observer.
    """
    if name not in OBSERVERS:
        raise ConfigError(f"unknown observer {name!r}; accepted: {', '.join(OBSERVERS)}")
    return OBSERVERS[name](granularity, **kwargs)
