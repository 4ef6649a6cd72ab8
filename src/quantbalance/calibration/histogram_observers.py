"""Histogram observers (per-tensor): ``percentile`` and TensorRT-style ``entropy`` (KL)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from quantbalance.calibration.histogram import Histogram
from quantbalance.calibration.observer_base import Observer
from quantbalance.errors import ConfigError
from quantbalance.formats import Scheme
from quantbalance.formats.granularity import Granularity, PerTensor


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
