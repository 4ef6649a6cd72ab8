"""The straight-through estimator, defined once for every fake-quant path (QAT, search)."""

from __future__ import annotations

import torch


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest in the forward pass; identity gradient in the backward pass.

    Args:
        x: any float tensor.

    Returns:
        ``round(x)`` whose gradient with respect to ``x`` is 1.
    """
    return x + (torch.round(x) - x).detach()


def ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward ``y``, backward as if it were ``x`` (for non-differentiable quantizers).

    Args:
        x: the input the gradient should flow to.
        y: the quantized value used in the forward pass.

    Returns:
        A tensor equal to ``y`` with the gradient of ``x``.
    """
    return x + (y - x).detach()
