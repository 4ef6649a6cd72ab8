"""quantize_tensor (real, packed) and fake_quantize (simulated, differentiable).

Both share the same primitives, so a simulated model and its packed twin agree exactly.
"""

from __future__ import annotations

from typing import Protocol

import torch

import quantbalance.formats.granularity as granularity
from quantbalance.args import checked
from quantbalance.errors import ConfigError, NonFiniteError, UnsupportedError
from quantbalance.formats.granularity import (
    PerTensor,
    chunk_slices,
    from_blocks,
    grid_shape,
    to_blocks,
)
from quantbalance.formats.kinds import qparams_from_range
from quantbalance.formats.nonuniform import kmeans_codebook
from quantbalance.formats.qtensor import QuantizedTensor
from quantbalance.formats.scheme import Scheme
from quantbalance.formats.ste import ste
from quantbalance.formats.uniform import SCALE_DTYPES, round_values


class RangeObserver(Protocol):
    """What ``quantize_tensor`` needs from an observer (see ``quantbalance.calibration``)."""

    def update(self, x: torch.Tensor) -> None:
        """Record statistics of ``x``."""

    def qparams(self, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale and zero point in the scheme's parameter grid shape."""


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    """Raise NonFiniteError if ``x`` holds NaN or ±Inf.

    Args:
        x: the tensor to check.
        what: name used in the message (e.g. the layer name).
    """
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NonFiniteError(
            f"{what} has {n_nan} NaN and {n_inf} infinite values out of {x.numel()}; "
            "only finite values can be quantized"
        )


def _check_input(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype
        raise UnsupportedError(
            f"{what}: expected a floating-point tensor (float32/float16/bfloat16), got {got}"
        )
    if x.numel() == 0:
        raise UnsupportedError(f"{what}: cannot quantize an empty tensor of shape {tuple(x.shape)}")


@checked
def quantize_tensor(
    x: torch.Tensor,
    scheme: Scheme,
    observer: RangeObserver | None = None,
    *,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize ``x`` with ``scheme`` into a packed :class:`QuantizedTensor`.

    Args:
        x: finite floating-point tensor.
        scheme: the scheme.
        observer: optional range observer (uniform / nf4 / fp8). It is updated with ``x`` and
            its ``qparams`` are used; default: the min/max of each block.
        weights: optional per-element importance for ``codebook`` k-means (same shape as ``x``).
        generator: random generator for stochastic rounding.
        name: what to call ``x`` in error messages.

    Returns:
        The quantized tensor.

    Example:
        >>> w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
        >>> qt = quantize_tensor(w, Scheme(4, granularity=PerGroup(size=128)))
        >>> qt.nbytes  # 64*256*4/8 codes + 64*2 float32 scales
        8704
    """
    _check_input(x, name)
    check_finite(x, name)
    shape = tuple(x.shape)
    gran = scheme.granularity
    zp = None
    codebook = None
    scale = None
    if scheme.format_kind.learns_table:
        if observer is not None:
            raise ConfigError(
                f"kind='{scheme.kind}' learns its table by k-means; pass observer=None"
            )
        blocks, mask = to_blocks(x.detach().float(), gran)
        w = None
        if weights is not None:
            if tuple(weights.shape) != shape:
                raise ConfigError(f"weights shape {tuple(weights.shape)} != tensor shape {shape}")
            w, _ = to_blocks(weights.detach().float(), gran)
        if mask is not None:
            w = mask.float() if w is None else w * mask
        cent, u = kmeans_codebook(blocks, scheme.n_levels, w)
        dt = SCALE_DTYPES[scheme.scale_dtype]
        codebook = cent.to(dt).reshape(*grid_shape(shape, gran), scheme.n_levels)
        codes = from_blocks(u.to(torch.uint8), shape, gran)
    else:
        codes, scale, zp = _uniform_codes(x.detach(), scheme, observer, generator)
    return QuantizedTensor.from_codes(codes, scale, zp, codebook, scheme, shape, x.dtype)


def _uniform_codes(
    x: torch.Tensor,
    scheme: Scheme,
    observer: RangeObserver | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes (uint8, ``x``'s shape), scale and zero point (grid shape) of a non-codebook scheme.

    Tensors above ``granularity.CHUNK_ELEMENTS`` are encoded in pieces of whole blocks (see
    ``granularity.chunk_slices``; ``PerTensor`` in flat runs once its range is known), which
    gives exactly the unchunked result. Stochastic rounding is never chunked (its random stream
    would be drawn in a different order).
    """
    shape = tuple(x.shape)
    gran = scheme.granularity
    grid = grid_shape(shape, gran)
    params: tuple[torch.Tensor, torch.Tensor | None] | None = None  # whole grid, known up front
    if observer is not None:
        if getattr(observer, "granularity", gran) != gran:
            raise ConfigError(
                f"observer granularity {observer.granularity!r} differs from the scheme's "
                f"{gran!r}; construct the observer with the scheme's granularity"
            )
        observer.update(x)
        s, z = observer.qparams(scheme)
        params = s.reshape(grid), None if z is None else z.reshape(grid)
    elif isinstance(gran, PerTensor):
        s, z = scheme.format_kind.block_qparams(x.float().reshape(1, -1), None, scheme)
        params = s.reshape(grid), None if z is None else z.reshape(grid)
    limit = x.numel() if scheme.rounding == "stochastic" else granularity.CHUNK_ELEMENTS
    codes = torch.empty(shape, dtype=torch.uint8, device=x.device)
    found = chunk_slices(shape, gran, limit)
    if isinstance(gran, PerTensor) and x.numel() > limit:
        flat, out = x.reshape(-1), codes.view(-1)
        runs = [slice(i, i + limit) for i in range(0, flat.numel(), limit)]
        pieces = [(flat[r], out[r], slice(None)) for r in runs]
    elif found is None:
        pieces = [(x, codes, slice(None))]
    else:
        axis, slices = found
        pieces = [
            (x.narrow(axis, r.start, r.stop - r.start), codes.narrow(axis, r.start,
             r.stop - r.start), r) for r in slices
        ]  # fmt: skip
    scales: list[torch.Tensor] = []
    zps: list[torch.Tensor] = []
    for piece, out_piece, rows in pieces:
        blocks, mask = to_blocks(piece.float(), gran)
        if params is None:
            s, z = scheme.format_kind.block_qparams(blocks, mask, scheme)
            scales.append(s)
            if z is not None:
                zps.append(z)
        else:
            s = params[0][rows].reshape(-1) if params[0].dim() else params[0].reshape(-1)
            z = params[1]
            if z is not None:
                z = z[rows].reshape(-1) if z.dim() else z.reshape(-1)
        zcol = None if z is None else z.unsqueeze(1)
        u = scheme.format_kind.encode(blocks, s.unsqueeze(1), zcol, scheme, generator)
        out_piece.copy_(from_blocks(u.to(torch.uint8), tuple(piece.shape), gran))
    if params is not None:
        s_all, z_all = params
    else:
        s_all = torch.cat(scales)
        z_all = torch.cat(zps) if zps else None
    scale = s_all.to(SCALE_DTYPES[scheme.scale_dtype]).reshape(grid)
    zp = None
    if z_all is not None:
        zp = z_all.to(torch.int8 if scheme.signed else torch.uint8).reshape(grid)
    return codes, scale, zp


@checked
def fake_quantize(
    x: torch.Tensor,
    scheme: Scheme,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` in float, differentiably (straight-through estimator).

    For uniform schemes the gradient flows to ``x`` inside the clipping range (zero outside) and
    to ``scale`` if it requires grad (LSQ). Other kinds pass the gradient straight through.

    Args:
        x: float tensor.
        scheme: the scheme.
        scale: optional scales in the parameter grid shape (default: from each block's range).
        zero_point: optional zero points in the grid shape (asymmetric schemes).
        generator: random generator for stochastic rounding.

    Returns:
        Tensor like ``x`` holding values on the quantization grid.
    """
    _check_input(x, "fake_quantize input")
    if not scheme.format_kind.affine(scheme):
        return ste(x, quantize_tensor(x.detach(), scheme, generator=generator).dequantize())
    gran = scheme.granularity
    blocks, _ = to_blocks(x, gran)
    if scale is None:
        d = blocks.detach()
        scale, zero_point = qparams_from_range(d.amin(1), d.amax(1), scheme)
    s = scale.reshape(-1, 1).to(blocks.dtype)
    zp = (
        (scheme.qmin + scheme.qmax + 1) // 2
        if zero_point is None
        else zero_point.reshape(-1, 1).to(blocks.dtype)
    )
    v = blocks / s
    r = v + (round_values(v.detach(), scheme.rounding, generator) - v).detach()
    q = torch.clamp(r + zp, scheme.qmin, scheme.qmax)
    return from_blocks((q - zp) * s, tuple(x.shape), gran)
