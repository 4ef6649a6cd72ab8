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

import itertools
import math

import numpy as np
import torch

from quantbalance.calibration.histogram import Histogram
from quantbalance.errors import ConfigError, NonFiniteError
from quantbalance.formats import Scheme, granularity
from quantbalance.formats.granularity import Granularity, PerTensor, grid_shape, to_blocks
from quantbalance.formats.kinds import qparams_from_range

_MAX_STORED = 1 << 27


def _finite_blocks(x: torch.Tensor, gran: Granularity) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Blocks of ``x``, their finite mask, and the count of infinite values (NaN raises)."""
    if torch.isnan(x).any():
        raise NonFiniteError(
            f"observed tensor of shape {tuple(x.shape)} holds {int(torch.isnan(x).sum())} NaN "
            "values; NaN cannot be calibrated (±inf is excluded and counted)"
        )
    finite = torch.isfinite(x)
    n_inf = int(x.numel() - finite.sum())
    if n_inf == x.numel():
        raise NonFiniteError(
            f"observed tensor of shape {tuple(x.shape)} holds no finite value ({n_inf} infinite)"
        )
    blocks, _ = to_blocks(x.detach().float(), gran)
    fblocks, _ = to_blocks(finite, gran)
    return blocks, fblocks, n_inf


class Observer:
    """Base class: keeps per-block running min/max of finite values.

    Args:
        granularity: blocks that share parameters (default per-tensor).
    """

    name = "base"

    def __init__(self, granularity: Granularity | None = None) -> None:
        self.granularity = granularity if granularity is not None else PerTensor()
        self.n_nonfinite = 0
        self.n_seen = 0
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self._grid: tuple[int, ...] | None = None

    def update(self, x: torch.Tensor) -> None:
        """Record one batch.

        Args:
            x: a float tensor (NaN raises; ±inf excluded and counted).
        """
        grid = grid_shape(tuple(x.shape), self.granularity)
        if self._grid is not None and grid != self._grid:
            raise ConfigError(
                f"{self.name} observer: parameter grid changed from {self._grid} to {grid} "
                f"(tensor shape {tuple(x.shape)}); static observers need a fixed grid"
            )
        self._grid = grid
        blocks, finite, n_inf = _finite_blocks(x, self.granularity)
        self.n_nonfinite += n_inf
        self.n_seen += x.numel()
        big = torch.finfo(torch.float32).max
        lo = torch.where(finite, blocks, big).amin(1)
        hi = torch.where(finite, blocks, -big).amax(1)
        empty = ~finite.any(1)
        lo = torch.where(empty, 0.0, lo)
        hi = torch.where(empty, 0.0, hi)
        self._observe(blocks, finite, lo, hi)

    def _observe(
        self, blocks: torch.Tensor, finite: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> None:
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _require_data(self) -> None:
        if self.lo is None:
            raise ConfigError(f"{self.name} observer has seen no data; call update(x) first")

    def range(self, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block ``(lo, hi)`` the scheme should cover, flat over blocks.

        Args:
            scheme: the target scheme (some observers search per scheme).

        Returns:
            Two float32 tensors of ``n_blocks`` values.
        """
        self._require_data()
        assert self.lo is not None and self.hi is not None
        return self.lo, self.hi

    def qparams(self, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale and zero point for ``scheme``, in the parameter grid shape.

        Args:
            scheme: a uniform, nf4 or fp8 scheme.

        Returns:
            ``(scale, zero_point or None)``.
        """
        lo, hi = self.range(scheme)
        scale, zp = qparams_from_range(lo, hi, scheme)
        assert self._grid is not None
        return scale.reshape(self._grid), None if zp is None else zp.reshape(self._grid)


class MinMaxObserver(Observer):
    """Running minimum and maximum: no clipping at all."""

    name = "minmax"


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's min and max.

    Args:
        granularity: blocks that share parameters.
        momentum: weight of the newest batch, in (0, 1].
    """

    name = "ema"

    def __init__(self, granularity: Granularity | None = None, momentum: float = 0.1) -> None:
        if not 0 < momentum <= 1:
            raise ConfigError(f"momentum={momentum}: must be in (0, 1]")
        super().__init__(granularity)
        self.momentum = momentum

    def _observe(
        self, blocks: torch.Tensor, finite: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> None:
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo = self.lo + m * (lo - self.lo)
            self.hi = self.hi + m * (hi - self.hi)


class _HistogramObserver(Observer):
    """Per-tensor observers built on a growing histogram."""

    def __init__(self, granularity: Granularity | None = None, n_bins: int = 2048) -> None:
        super().__init__(granularity)
        if not isinstance(self.granularity, PerTensor):
            raise ConfigError(
                f"{self.name} observer supports granularity PerTensor() only, got "
                f"{self.granularity!r}; use minmax or mse for per-channel ranges"
            )
        self.hist = Histogram(n_bins)

    def _observe(
        self, blocks: torch.Tensor, finite: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> None:
        super()._observe(blocks, finite, lo, hi)
        self.hist.update(blocks[finite])


class PercentileObserver(_HistogramObserver):
    """Clip to the ``percentile``-th (and ``100 - percentile``-th) percentile.

    Args:
        granularity: must be PerTensor.
        percentile: in (50, 100], e.g. 99.99.
        n_bins: histogram bins.
    """

    name = "percentile"

    def __init__(
        self, granularity: Granularity | None = None, percentile: float = 99.99, n_bins: int = 2048
    ) -> None:
        if not 50 < percentile <= 100:
            raise ConfigError(f"percentile={percentile}: must be in (50, 100]")
        super().__init__(granularity, n_bins)
        self.percentile = percentile

    def range(self, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
        """Percentile range (see class doc)."""
        self._require_data()
        p = self.percentile / 100
        if scheme.format_kind.has_zero_point(scheme):
            lo, hi = self.hist.quantile(1 - p), self.hist.quantile(p)
        else:
            t = _abs_quantile(self.hist, p)
            lo, hi = -t, t
        return torch.tensor([lo], dtype=torch.float32), torch.tensor([hi], dtype=torch.float32)


def _abs_quantile(hist: Histogram, q: float) -> float:
    cdf = hist.abs_counts().cumsum(0)
    i = int(torch.searchsorted(cdf, torch.tensor([q * float(cdf[-1])], dtype=torch.float64)))
    return (min(i, cdf.numel() - 1) + 1) * hist.width


class EntropyObserver(_HistogramObserver):
    """TensorRT-style KL calibration: the ``|x|`` threshold minimising KL(P || Q).

    Args:
        granularity: must be PerTensor.
        n_bins: histogram bins over ``[-R, R]`` (``n_bins / 2`` over ``|x|``).
        stride: candidate thresholds are every ``stride``-th bin (1 = all).
    """

    name = "entropy"

    def __init__(
        self, granularity: Granularity | None = None, n_bins: int = 2048, stride: int = 1
    ) -> None:
        super().__init__(granularity, n_bins)
        self.stride = max(1, stride)

    def range(self, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
        """KL-optimal range (see class doc)."""
        self._require_data()
        levels = 2 ** (scheme.bits - 1) if scheme.signed or scheme.symmetric else 2**scheme.bits
        t = kl_threshold(self.hist.abs_counts().numpy(), max(levels, 2), self.stride)
        t *= self.hist.width
        assert self.lo is not None and self.hi is not None
        lo = torch.clamp(self.lo, min=-t)
        hi = torch.clamp(self.hi, max=t)
        if not scheme.format_kind.has_zero_point(scheme):
            lo, hi = torch.full_like(lo, -t), torch.full_like(hi, t)
        return lo, hi


def kl_threshold(counts: np.ndarray, n_levels: int, stride: int = 1) -> float:
    """Number of ``|x|`` bins to keep so that quantizing them to ``n_levels`` loses least (KL).

    Args:
        counts: histogram of ``|x|`` (bin 0 starts at 0).
        n_levels: quantization levels over ``[0, threshold]``.
        stride: test every ``stride``-th candidate.

    Returns:
        The threshold in bins (a float, multiply by the bin width).
    """
    counts = np.asarray(counts, dtype=np.float64)
    nz = np.nonzero(counts)[0]
    last = int(nz[-1]) + 1 if nz.size else 1
    if last <= n_levels:
        return float(last)
    best, best_i = math.inf, last
    for i in range(n_levels, last + 1, stride):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum()
        edges = np.linspace(0, i, n_levels + 1).round().astype(int)
        q = np.zeros(i)
        src = counts[:i]
        for a, b in itertools.pairwise(edges):
            if b <= a:
                continue
            seg = src[a:b]
            nonzero = seg > 0
            k = nonzero.sum()
            if k:
                q[a:b][nonzero] = seg.sum() / k
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        qm = np.where(q[mask] > 0, q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / qm)))
        if kl < best:
            best, best_i = kl, i
    return float(best_i)


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
