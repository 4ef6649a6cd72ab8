"""Weight/activation format kinds: one object per kind holds its behaviour.

A :class:`~quantbalance.formats.scheme.Scheme` names its kind by a string (``scheme.kind``), so
Plans, JSON and YAML stay plain text; ``get_kind(name)`` (or ``scheme.format_kind``) returns the
object (interface: ``formats.kind_base.FormatKind``) that knows the kind's rules, its parameters
from a range, how values become unsigned codes (``encode``) and back (``decode``), and which
tensors it stores. Adding a kind means adding one class here and registering it in ``KINDS``;
nothing else branches on kind names.

Registered kinds:

Stored tensors and bytes (``n`` values, ``B`` blocks, ``s`` bytes per scale, ``b`` bits):

============  ====  ==============================================  ============================
kind          bits  codes                                           ``nbytes``
============  ====  ==============================================  ============================
uniform       1–8   affine integer grid ``round(x / scale) + zp``   ``ceil(n·b/8) + B·s`` (+ B
                                                                    zero points if asymmetric)
nf4           4     index into the NF4 table, absmax scale          ``ceil(n/2) + B·s``
codebook      1–8   index into a k-means table learned per block    ``ceil(n·b/8) + B·2^b·s``
fp8_e4m3      8     float8 e4m3fn bits of ``x / (absmax / 448)``    ``n + B·s``
fp8_e5m2      8     float8 e5m2 bits of ``x / (absmax / 57344)``    ``n + B·s``
fp4_e2m1      4     OCP FP4 (E2M1) bits of ``x / (absmax / 6)``     ``ceil(n/2) + B·s``
============  ====  ==============================================  ============================

FP4 (E2M1) codes: bit 3 is the sign, bits 0–2 index the magnitudes
``0, 0.5, 1, 1.5, 2, 3, 4, 6``; ``x / scale`` rounds to the nearest magnitude (a tie goes to the
smaller one) and zero is always stored as code 0. The per-block scale follows the scheme's
granularity (``PerGroup(size=32)`` gives MXFP4's block size, with a float scale instead of MX's
power-of-two one).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from quantbalance.errors import ConfigError, NumericsError, UnsupportedError
from quantbalance.formats.granularity import grid_shape
from quantbalance.formats.kind_base import FormatKind, Rng, scale_bytes
from quantbalance.formats.nonuniform import NF4_TABLE, nearest_code
from quantbalance.formats.packing import packed_nbytes
from quantbalance.formats.uniform import (
    SCALE_DTYPES,
    dequantize_affine,
    quantize_affine,
    store_scale,
)

if TYPE_CHECKING:  # annotations only: scheme.py imports this module
    from quantbalance.formats.scheme import Scheme


class UniformKind(FormatKind):
    """Affine integer grid (see ``formats.uniform``); 1 bit is binary ``±scale``."""

    name = "uniform"
    integer = True
    clipping = True
    gptq = True
    activations = True

    def check(self, scheme: Scheme) -> None:
        if scheme.bits == 1 and not scheme.symmetric:
            raise ValueError(
                "bits=1 uniform is binary (±scale) and must be symmetric; "
                "use symmetric=True or bits>=2"
            )

    def label(self, scheme: Scheme, gran: str) -> str:
        base = f"{'int' if scheme.signed else 'uint'}{scheme.bits}-{gran}"
        return base if scheme.symmetric else f"{base}-asym"

    def affine(self, scheme: Scheme) -> bool:
        return scheme.bits >= 2

    def has_zero_point(self, scheme: Scheme) -> bool:
        return not scheme.symmetric

    def range_qparams(
        self, lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        absmax = torch.maximum(lo.abs(), hi.abs())
        if scheme.bits == 1:
            return store_scale(absmax / 2, scheme), None
        if scheme.symmetric:
            return store_scale(absmax / ((scheme.qmax - scheme.qmin) / 2), scheme), None
        lo = torch.clamp(lo, max=0.0)
        hi = torch.clamp(hi, min=0.0)
        scale = store_scale((hi - lo) / (scheme.qmax - scheme.qmin), scheme)
        zp = torch.round(scheme.qmin - lo / scale).clamp(scheme.qmin, scheme.qmax)
        return scale, zp.to(torch.int32)

    def block_qparams(
        self, blocks: torch.Tensor, mask: torch.Tensor | None, scheme: Scheme
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if scheme.bits == 1:  # binary: the mean |x| of the real values
            real = blocks.abs() if mask is None else blocks.abs() * mask
            count = blocks.shape[1] if mask is None else mask.sum(1)
            return store_scale(real.sum(1) / count, scheme), None
        return super().block_qparams(blocks, mask, scheme)

    def encode(
        self, values: Tensor, scale: Tensor, zp: Tensor | None, scheme: Scheme, rng: Rng = None
    ) -> Tensor:
        return quantize_affine(values, scale, zp, scheme, rng) - scheme.qmin

    def decode(self, codes: Tensor, scale: Tensor, zp: Tensor | None, scheme: Scheme) -> Tensor:
        return dequantize_affine(codes.to(torch.int32) + scheme.qmin, scale, zp, scheme)


class TableKind(FormatKind):
    """Codes index a fixed table of values times a per-block ``scale = absmax / top``.

    A subclass gives ``table`` (the value of each code), ``top`` (the largest magnitude the
    codes reach) and ``index`` (the code of each scaled value).
    """

    table: torch.Tensor
    top: float = 1.0

    def index(self, v: torch.Tensor) -> torch.Tensor:
        """Codes of the scaled values ``v = x / scale`` (any shape).

        Args:
            v: scaled values.

        Returns:
            Integer codes of ``v``'s shape.
        """
        raise UnsupportedError(f"kind={self.name!r} has no code table index")

    def range_qparams(
        self, lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return store_scale(torch.maximum(lo.abs(), hi.abs()) / self.top, scheme), None

    def encode(
        self, values: Tensor, scale: Tensor, zp: Tensor | None, scheme: Scheme, rng: Rng = None
    ) -> Tensor:
        return self.index(values / scale)

    def decode(self, codes: Tensor, scale: Tensor, zp: Tensor | None, scheme: Scheme) -> Tensor:
        return self.table.to(codes.device)[codes.long()] * scale


class NF4Kind(TableKind):
    """NF4 (QLoRA): the nearest of 16 normal-float quantiles in ``[-1, 1]``, absmax scale."""

    name = "nf4"
    fixed_bits = 4
    clipping = True
    gptq = True
    table = NF4_TABLE

    def index(self, v: torch.Tensor) -> torch.Tensor:
        if v.dim() == 1:
            return nearest_code(v.unsqueeze(1), NF4_TABLE)[:, 0]
        return nearest_code(v, NF4_TABLE)


class FP8Kind(TableKind):
    """Float8 bits of ``x / scale`` (torch's own conversion: round to nearest even, clamped)."""

    fixed_bits = 8

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype
        self.top = float(torch.finfo(dtype).max)
        self.table = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()

    def index(self, v: torch.Tensor) -> torch.Tensor:
        return v.clamp(-self.top, self.top).to(self.dtype).view(torch.uint8)


FP4_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


class FP4Kind(TableKind):
    """OCP FP4 E2M1 with one float scale per block (see the module docstring)."""

    name = "fp4_e2m1"
    fixed_bits = 4
    table = torch.cat([FP4_MAGNITUDES, -FP4_MAGNITUDES])
    top = 6.0

    def index(self, v: torch.Tensor) -> torch.Tensor:
        mag = nearest_code(v.reshape(-1, 1).abs(), FP4_MAGNITUDES).reshape(v.shape)
        return torch.where((v < 0) & (mag > 0), mag + 8, mag)


class CodebookKind(FormatKind):
    """k-means lookup table per block, stored as ``codebook`` (no scale, no range)."""

    name = "codebook"
    range_based = False
    learns_table = True

    def label(self, scheme: Scheme, gran: str) -> str:
        return f"lut{scheme.bits}-{gran}"

    def nbytes(self, numel: int, blocks: int, scheme: Scheme) -> int:
        return packed_nbytes(numel, scheme.bits) + blocks * scheme.n_levels * scale_bytes(scheme)


KINDS: dict[str, FormatKind] = {
    k.name: k
    for k in (
        UniformKind(),
        NF4Kind(),
        CodebookKind(),
        FP8Kind("fp8_e4m3", torch.float8_e4m3fn),
        FP8Kind("fp8_e5m2", torch.float8_e5m2),
        FP4Kind(),
    )
}


def get_kind(name: str) -> FormatKind:
    """The kind object registered under ``name``.

    Args:
        name: a kind name (``scheme.kind``).

    Returns:
        The :class:`FormatKind`.

    Raises:
        ConfigError: unknown name (the accepted ones are listed).
    """
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown kind {name!r}; accepted: {', '.join(KINDS)}") from None


def qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point that make the codes cover ``[lo, hi]``.

    Args:
        lo: per-block minimum (any shape).
        hi: per-block maximum (same shape).
        scheme: a range-based scheme (``uniform``, ``nf4``, fp8, fp4).

    Returns:
        ``(scale, zero_point)``: float32 scale; int32 zero point for asymmetric uniform schemes,
        else None (implied: 0, or ``2^(b-1)`` for unsigned symmetric codes).
    """
    return get_kind(scheme.kind).range_qparams(lo.float(), hi.float(), scheme)


def stored_nbytes(shape: tuple[int, ...], scheme: Scheme) -> int:
    """Exact bytes ``quantize_tensor`` stores for a tensor of ``shape`` (no quantization run).

    Args:
        shape: the tensor's shape (a layer's weight matrix).
        scheme: the scheme.

    Returns:
        ``QuantizedTensor.nbytes`` of its quantization under ``scheme``.
    """
    blocks = math.prod(grid_shape(tuple(shape), scheme.granularity))
    return get_kind(scheme.kind).nbytes(math.prod(shape), blocks, scheme)


def storable(x: Tensor, scheme: Scheme) -> bool:
    """Whether quantizing ``x`` under ``scheme`` keeps every scale within its storage dtype.

    A scale beyond it (an fp16 scale over 65504) is refused by quantization
    (``NumericsError``); a search drops such a candidate for the layer instead. The check uses
    the whole tensor's range, which bounds every block's scale (exact for symmetric schemes, a
    safe bound for asymmetric ones); it quantizes nothing.

    Args:
        x: the tensor (a layer's weight matrix).
        scheme: the scheme.

    Returns:
        True if the scales (or codebook values) fit ``scheme.scale_dtype``.
    """
    dt = SCALE_DTYPES[scheme.scale_dtype]
    if dt == torch.float32 or x.numel() == 0:
        return True
    lo, hi = x.min().float().reshape(1), x.max().float().reshape(1)
    kind = get_kind(scheme.kind)
    if not kind.range_based:  # stored table values lie within the tensor's range
        return float(torch.maximum(lo.abs(), hi.abs())) <= torch.finfo(dt).max
    try:
        kind.range_qparams(lo, hi, scheme)
    except NumericsError:
        return False
    return True
