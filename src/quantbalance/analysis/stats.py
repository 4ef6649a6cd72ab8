"""Distribution statistics of weights and activations (the seeds' quantization analysis)."""

from __future__ import annotations

import torch

OUTLIER_SIGMAS = 6.0


def tensor_stats(x: torch.Tensor) -> dict[str, float]:
    """Range, moments and outlier share of the finite values of ``x``.

    ``outlier_share`` is the fraction of values farther than 6 standard deviations from the
    mean (about 2e-9 for a Gaussian); ``kurtosis`` is the excess kurtosis (0 for a Gaussian).

    Args:
        x: any tensor.

    Returns:
        ``min, max, absmax, mean, std, kurtosis, outlier_share, nonfinite_share``.
    """
    v = x.detach().double().reshape(-1)
    fin = torch.isfinite(v)
    n_all = max(v.numel(), 1)
    v = v[fin]
    if v.numel() == 0:
        nan = float("nan")
        return dict.fromkeys(
            ["min", "max", "absmax", "mean", "std", "kurtosis", "outlier_share"], nan
        ) | {"nonfinite_share": 1.0}
    mean = v.mean()
    std = v.std(unbiased=False)
    z = (v - mean) / std.clamp(min=1e-30)
    return {
        "min": float(v.min()),
        "max": float(v.max()),
        "absmax": float(v.abs().max()),
        "mean": float(mean),
        "std": float(std),
        "kurtosis": float(z.pow(4).mean() - 3.0),
        "outlier_share": float((z.abs() > OUTLIER_SIGMAS).double().mean()),
        "nonfinite_share": 1.0 - v.numel() / n_all,
    }
