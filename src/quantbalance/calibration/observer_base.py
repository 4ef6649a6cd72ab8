"""The observer interface and the running min/max observers (``minmax``, ``ema``).

See ``calibration.observers`` for the table of every observer.
"""

from __future__ import annotations

import torch

from quantbalance.errors import ConfigError, NonFiniteError
from quantbalance.formats import Scheme
from quantbalance.formats.granularity import Granularity, PerTensor, grid_shape, to_blocks
from quantbalance.formats.kinds import qparams_from_range


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
            self.lo, self.hi = self._combine(self.lo, self.hi, lo, hi)

    def _combine(
        self, lo: torch.Tensor, hi: torch.Tensor, new_lo: torch.Tensor, new_hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The running range after a batch with range ``[new_lo, new_hi]`` (default: union)."""
        return torch.minimum(lo, new_lo), torch.maximum(hi, new_hi)

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

    def _combine(
        self, lo: torch.Tensor, hi: torch.Tensor, new_lo: torch.Tensor, new_hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.momentum
        return lo + m * (new_lo - lo), hi + m * (new_hi - hi)
