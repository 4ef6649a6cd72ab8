"""A growing, zero-centred histogram for per-tensor range statistics over many batches.

Bins cover ``[-R, R]`` in ``n_bins`` equal steps. When data exceeds ``R`` the range doubles as
many times as needed and old bins merge exactly into the new ones (doubling keeps every old bin
inside one new bin), so no sample is ever re-binned approximately.
"""

from __future__ import annotations

import math

import torch

from quantbalance.errors import ConfigError


class Histogram:
    """Counts of finite values in ``n_bins`` equal bins over ``[-R, R]``.

    Args:
        n_bins: number of bins (even, >= 16).
    """

    def __init__(self, n_bins: int = 2048) -> None:
        if n_bins < 16 or n_bins % 2:
            raise ConfigError(f"n_bins={n_bins}: must be an even number >= 16")
        self.n_bins = n_bins
        self.counts = torch.zeros(n_bins, dtype=torch.float64)
        self.radius = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def width(self) -> float:
        """Width of one bin."""
        return 2 * self.radius / self.n_bins

    def update(self, x: torch.Tensor) -> None:
        """Add finite values (1-D or any shape).

        Args:
            x: finite float values.
        """
        x = x.reshape(-1).double()
        if x.numel() == 0:
            return
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        amax = max(abs(self.min), abs(self.max))
        if self.radius == 0.0:
            self.radius = amax if amax > 0 else 1e-8
        elif amax > self.radius:
            factor = 2 ** math.ceil(math.log2(amax / self.radius))
            half = self.n_bins // 2
            idx = torch.div(
                torch.arange(self.n_bins) + half * (factor - 1), factor, rounding_mode="floor"
            )
            merged = torch.zeros_like(self.counts).index_add_(0, idx, self.counts)
            self.counts = merged
            self.radius *= factor
        idx = ((x + self.radius) / self.width).floor().clamp(0, self.n_bins - 1).long()
        self.counts += torch.bincount(idx, minlength=self.n_bins).double()

    def centers(self) -> torch.Tensor:
        """Bin centres, float64."""
        return -self.radius + (torch.arange(self.n_bins, dtype=torch.float64) + 0.5) * self.width

    def abs_counts(self) -> torch.Tensor:
        """Counts of ``|x|`` in ``n_bins / 2`` bins over ``[0, R]``."""
        half = self.n_bins // 2
        return self.counts[half:] + self.counts[:half].flip(0)

    def quantile(self, q: float) -> float:
        """Approximate quantile (linear inside the bin).

        Args:
            q: in [0, 1].

        Returns:
            The value below which a fraction ``q`` of the samples lie.
        """
        cdf = self.counts.cumsum(0)
        total = float(cdf[-1])
        target = q * total
        i = int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64)).item())
        i = min(i, self.n_bins - 1)
        prev = float(cdf[i - 1]) if i > 0 else 0.0
        frac = (target - prev) / max(float(self.counts[i]), 1e-30)
        value = -self.radius + (i + min(max(frac, 0.0), 1.0)) * self.width
        return min(max(value, self.min), self.max)
