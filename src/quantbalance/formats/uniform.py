"""Uniform (affine) integer quantization.

Quantize:   ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``
Dequantize: ``x̂ = (q - zero_point) · scale``

The scale comes from the range the codes must cover:

* symmetric:  ``scale = absmax / ((qmax - qmin) / 2)``, ``zero_point = (qmin + qmax + 1) // 2``
  (0 for signed codes, ``2^(b-1)`` for unsigned ones);
* asymmetric: the range is first widened to include 0,
  ``[lo, hi] = [min(x_min, 0), max(x_max, 0)]``,
  then ``scale = (hi - lo) / (qmax - qmin)`` and ``zero_point = clamp(round(qmin - lo / scale))``.

Zero is therefore always exactly representable (``x = 0 -> q = zero_point -> x̂ = 0``), which keeps
zero padding and ReLU outputs exact.

Worked example (8-bit asymmetric unsigned, x in [-1.0, 3.0]): ``scale = 4.0 / 255 = 0.015686``,
``zero_point = round(0 - (-1.0) / 0.015686) = round(63.75) = 64``. ``x = 1.5`` gives
``q = round(1.5 / 0.015686) + 64 = round(95.625) + 64 = 160`` and ``x̂ = (160 - 64) · 0.015686 =
1.5059``. (The seeds' example multiplies ``x`` by the scale where it must divide; that maps 1.5 to
``round(0.0235) + 64 = 64``, i.e. to zero, which is wrong.)

1-bit uniform is binary: codes {0, 1} stand for ``{-scale, +scale}``; zero is not representable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from quantbalance.errors import NumericsError

if TYPE_CHECKING:  # annotations only: scheme.py -> kinds.py -> this module
    from quantbalance.formats.scheme import Scheme

SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def store_scale(scale: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Round a scale to its storage dtype and keep it strictly positive.

    Quantization uses exactly the stored value, so dequantization matches bit for bit.

    Args:
        scale: float32 scales.
        scheme: the scheme (its ``scale_dtype``).

    Returns:
        float32 tensor holding values representable in ``scheme.scale_dtype``.

    Raises:
        NumericsError: a scale exceeds the storage dtype's range (it would be stored as inf and
            every code of its block would dequantize to inf or NaN).
    """
    dt = SCALE_DTYPES[scheme.scale_dtype]
    if dt != torch.float32 and scale.numel() and not _tracing():
        _check_range(scale, scheme, dt)
    tiny = torch.finfo(dt).tiny
    return scale.float().clamp(min=tiny).to(dt).float().clamp(min=tiny)


def _tracing() -> bool:
    """Whether torch.compile or torch.export is tracing (no data-dependent checks then)."""
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting())


def _check_range(scale: torch.Tensor, scheme: Scheme, dt: torch.dtype) -> None:
    """Raise if a scale exceeds ``dt``'s range (it would be stored as inf)."""
    top = float(scale.max())
    if top > torch.finfo(dt).max:
        raise NumericsError(
            f"a scale of {top:.4g} does not fit scale_dtype={scheme.scale_dtype!r} (largest "
            f"{torch.finfo(dt).max:.4g}); the tensor's values are too large for this scheme: use "
            "scale_dtype='float32' (or 'bfloat16'), or keep the layer float"
        )


def implied_zero_point(scheme: Scheme) -> int:
    """Zero point of a symmetric uniform scheme (0 for signed codes, ``2^(b-1)`` unsigned).

    Args:
        scheme: a uniform scheme.

    Returns:
        The fixed zero point.
    """
    return (scheme.qmin + scheme.qmax + 1) // 2 if scheme.bits > 1 else 0


def round_values(
    v: torch.Tensor, mode: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Round to integers: to nearest (half to even) or stochastically (unbiased).

    Args:
        v: float tensor.
        mode: ``nearest`` or ``stochastic``.
        generator: random generator for ``stochastic`` (seed it for reproducibility).

    Returns:
        Float tensor of integers.
    """
    if mode == "nearest":
        return torch.round(v)
    noise = torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype)
    return torch.floor(v + noise)


def quantize_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | int | None,
    scheme: Scheme,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integer codes ``q`` in ``[qmin, qmax]`` (int32).

    Args:
        x: values.
        scale: scales broadcastable to ``x``.
        zero_point: zero points broadcastable to ``x`` (None: the scheme's implied one).
        scheme: a uniform scheme.
        generator: for stochastic rounding.

    Returns:
        int32 codes.
    """
    if scheme.bits == 1:
        return (x >= 0).to(torch.int32)
    zp = implied_zero_point(scheme) if zero_point is None else zero_point
    v = round_values(x.float() / scale, scheme.rounding, generator)
    return (v + zp).clamp(scheme.qmin, scheme.qmax).to(torch.int32)


def dequantize_affine(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int | None, scheme: Scheme
) -> torch.Tensor:
    """``x̂ = (q - zero_point) · scale`` (binary: ``(2q - 1) · scale``).

    Args:
        q: integer codes.
        scale: scales broadcastable to ``q``.
        zero_point: zero points broadcastable to ``q`` (None: the scheme's implied one).
        scheme: a uniform scheme.

    Returns:
        float32 values.
    """
    if scheme.bits == 1:
        return (2.0 * q.float() - 1.0) * scale
    zp = implied_zero_point(scheme) if zero_point is None else zero_point
    return (q.float() - zp) * scale
