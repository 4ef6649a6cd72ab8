"""Per-layer input statistics: a layer's input rows and running sums over them.

:class:`InputStatsCollector` is an ``observe`` callback for the block-by-block runner
(:mod:`quantbalance.calibration.sequential`, which re-exports these names): it accumulates
``Σ x xᵀ`` (GPTQ's Hessian, the second moment) and optionally ``Σ |x|`` (AWQ, SmoothQuant) over
the rows :func:`input_rows` gives for each layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantbalance.errors import CalibrationError, UnsupportedError
from quantbalance.nn.layout import layout_of, plain_forward


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The rows a layer multiplies with its weight matrix (``nn.weight_matrix`` layout).

    Linear (and transformers' ``Conv1D``): every token; Conv1d/Conv2d (``groups=1``, numeric
    zero padding): every unfolded patch. Only layers that run their torch class's own forward
    (``nn.plain_forward``) have rows: a subclass's forward may pad or reshape its input first.

    Args:
        module: the layer.
        x: its input.

    Returns:
        ``(N, in_features)`` float32 rows, or None for a layer without such a view.
    """
    if not supports_rows(module):
        return None
    if layout_of(module) in ("rows", "transposed"):
        return x.reshape(-1, x.shape[-1]).float()
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    k, d, p, s = module.kernel_size, module.dilation, module.padding, module.stride
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        k, d, p, s = (1, k[0]), (1, d[0]), (0, p[0]), (1, s[0])  # type: ignore[index]
    cols = nn.functional.unfold(x.float(), k, d, p, s)  # (B, C·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def supports_rows(module: nn.Module) -> bool:
    """Whether :func:`input_rows` has a row view of ``module``'s input.

    Args:
        module: any module.

    Returns:
        True for Linear, transformers' ``Conv1D`` and ungrouped, zero-padded Conv1d/Conv2d with
        numeric padding, each running its torch class's own forward.
    """
    if not plain_forward(module):
        return False
    if isinstance(module, nn.Linear) or layout_of(module) == "transposed":
        return True
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


_ROWS = 256  # rows of a float32 product promoted to float64 at a time


class InputStats:
    """Running sums of a layer's input rows: ``Σ x xᵀ`` (float64) and optionally ``Σ |x|``.

    The sums live on ``device`` (the inputs' device: a GPU when calibrating there).
    """

    def __init__(
        self, n_features: int, absmean: bool = False, device: torch.device | str = "cpu"
    ) -> None:
        self.count = 0
        self.gram = torch.zeros(n_features, n_features, dtype=torch.float64, device=device)
        self.abs_sum = (
            torch.zeros(n_features, dtype=torch.float64, device=device) if absmean else None
        )

    def hessian(self) -> torch.Tensor:
        """GPTQ's layer Hessian ``H = 2/n Σ x xᵀ`` (float32)."""
        return (2.0 * self.gram / max(self.count, 1)).float()

    def take_hessian(self) -> torch.Tensor:
        """:meth:`hessian`, computed in the running sum's own memory (the sum is used up).

        Same values bit for bit, without two float64 ``n × n`` temporaries (for a 5632-wide
        layer: 500 MB less at the peak). The statistics cannot be used afterwards.

        Returns:
            The float32 Hessian.
        """
        gram, self.gram = self.gram, torch.empty(0)
        return gram.mul_(2.0).div_(max(self.count, 1)).float()

    def second_moment(self) -> torch.Tensor:
        """``E[x xᵀ]`` (float32): ``‖X Δᵀ‖²/n = tr(Δ E[x xᵀ] Δᵀ)`` for any weight error Δ."""
        return (self.gram / max(self.count, 1)).float()

    def abs_mean(self) -> torch.Tensor:
        """Per-channel ``E|x|`` (float32); needs ``absmean=True``."""
        assert self.abs_sum is not None, "InputStats(absmean=True) is needed for abs_mean()"
        return (self.abs_sum / max(self.count, 1)).float()


class InputStatsCollector:
    """An ``observe`` callback that accumulates :class:`InputStats` per layer.

    Layers fed the same input tensor in a row (e.g. q/k/v projections) share one ``xᵀx`` product.

    Args:
        absmean: also accumulate ``Σ |x|`` per channel (AWQ, SmoothQuant).
    """

    def __init__(self, absmean: bool = False) -> None:
        self.absmean = absmean
        self.stats: dict[str, InputStats] = {}
        self._last: tuple[Any, ...] | None = None

    def __call__(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        key = (
            type(module),
            getattr(module, "kernel_size", None),
            getattr(module, "stride", None),
            getattr(module, "padding", None),
            getattr(module, "dilation", None),
        )
        if self._last is not None and self._last[0] is x and self._last[1] == key:
            _, _, n, gram, abs_sum = self._last
        else:
            rows = input_rows(module, x)
            if rows is None:
                raise UnsupportedError(f"layer {name!r} ({type(module).__name__}) has no row view")
            # the float32 product, added into the float64 sum in row slices (exact promotion:
            # the same values as adding its float64 copy, without an n × n float64 temporary)
            n, gram = rows.shape[0], rows.T @ rows
            abs_sum = rows.abs().sum(0).double() if self.absmean else None
            del rows
            self._last = (x, key, n, gram, abs_sum)
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = InputStats(gram.shape[0], self.absmean, gram.device)
        st.count += n
        for i in range(0, gram.shape[0], _ROWS):
            st.gram[i : i + _ROWS].add_(gram[i : i + _ROWS])
        if st.abs_sum is not None:
            st.abs_sum += abs_sum

    def pop(self, name: str) -> InputStats:
        """Remove and return a layer's statistics (frees memory once the layer is processed).

        Args:
            name: the layer.

        Returns:
            Its statistics.
        """
        self._last = None
        if name not in self.stats:
            raise CalibrationError(f"layer {name!r} never ran on the calibration data")
        return self.stats.pop(name)
