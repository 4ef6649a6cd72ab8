"""The interface of a format kind (``formats.kinds`` registers the concrete ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from quantbalance.errors import UnsupportedError
from quantbalance.formats.packing import packed_nbytes
from quantbalance.formats.uniform import SCALE_DTYPES

if TYPE_CHECKING:  # annotations only: scheme.py imports the kinds
    from quantbalance.formats.scheme import Scheme

Rng = torch.Generator | None  # the random generator of stochastic rounding


class FormatKind:
    """What one format kind is: its bit widths, stored tensors, parameters and codes.

    Attributes:
        name: the kind's name as written in a Scheme (``"uniform"``, ``"nf4"``, ...).
        fixed_bits: the only bit width the kind allows, or None (any of 1..8).
        integer: codes are an affine integer grid (integer kernels and int exports apply).
        range_based: parameters follow from a ``[lo, hi]`` range (observers, GPTQ scales).
        learns_table: codes index a table learned per block (stored as ``codebook``).
        clipping: weight observers (``mse``, ``percentile``, ...) may choose the range.
        gptq: GPTQ's column-by-column solve supports the kind.
        activations: activations may use the kind.
    """

    name: str = ""
    fixed_bits: int | None = None
    integer = False
    range_based = True
    learns_table = False
    clipping = False
    gptq = False
    activations = False

    def check(self, scheme: Scheme) -> None:
        """Refuse field combinations the kind does not allow.

        Args:
            scheme: the scheme being validated.

        Raises:
            ValueError: naming the field (pydantic turns it into a ``ConfigError``).
        """
        if self.fixed_bits is not None and scheme.bits != self.fixed_bits:
            raise ValueError(
                f"kind='{self.name}' needs bits={self.fixed_bits}, got bits={scheme.bits}"
            )

    def label(self, scheme: Scheme, gran: str) -> str:
        """Short name for tables (``nf4-g64``).

        Args:
            scheme: the scheme.
            gran: its granularity's short name.

        Returns:
            The label.
        """
        return f"{self.name}-{gran}"

    def affine(self, scheme: Scheme) -> bool:
        """Whether codes are ``round(x / scale) + zero_point`` with a real zero (LSQ, ONNX Q/DQ).

        Args:
            scheme: the scheme.

        Returns:
            True for uniform schemes of 2 bits or more.
        """
        return False

    def has_zero_point(self, scheme: Scheme) -> bool:
        """Whether the kind stores a per-block zero point for ``scheme``.

        Args:
            scheme: the scheme.

        Returns:
            True for asymmetric uniform schemes.
        """
        return False

    def nbytes(self, numel: int, blocks: int, scheme: Scheme) -> int:
        """Exact stored bytes of ``numel`` values in ``blocks`` blocks (``QuantizedTensor.nbytes``).

        Args:
            numel: number of quantized values.
            blocks: number of parameter blocks (``prod(grid_shape(...))``).
            scheme: the scheme.

        Returns:
            Packed codes + one scale per block (+ one zero-point byte per block if stored).
        """
        zero_points = blocks if self.has_zero_point(scheme) else 0
        return packed_nbytes(numel, scheme.bits) + blocks * scale_bytes(scheme) + zero_points

    def range_qparams(
        self, lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale and zero point that make the codes cover ``[lo, hi]``.

        Args:
            lo: per-block minimum (float32).
            hi: per-block maximum (float32).
            scheme: the scheme.

        Returns:
            ``(scale, zero_point or None)``.
        """
        raise UnsupportedError(
            f"kind='{self.name}' has no range-based parameters; accepted: the kinds with "
            "range_based=True (uniform, nf4, fp8_*, fp4_e2m1)"
        )

    def block_qparams(
        self, blocks: torch.Tensor, mask: torch.Tensor | None, scheme: Scheme
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flat per-block parameters from the blocks' own values (default: their min/max).

        Args:
            blocks: ``(N, L)`` values (padding zeros where ``mask`` is 0).
            mask: ``(N, L)`` validity of each value, or None.
            scheme: the scheme.

        Returns:
            ``(scale, zero_point or None)`` of shape ``(N,)``.
        """
        return self.range_qparams(blocks.amin(1).float(), blocks.amax(1).float(), scheme)

    def encode(
        self, values: Tensor, scale: Tensor, zp: Tensor | None, scheme: Scheme, rng: Rng = None
    ) -> Tensor:
        """Unsigned codes (``0 .. 2**bits - 1``) of ``values`` with broadcastable parameters.

        Args:
            values: float values (``(N, L)`` blocks or a ``(N,)`` column).
            scale: scales broadcastable to ``values``.
            zp: zero points broadcastable to ``values``, or None.
            scheme: the scheme.
            rng: random generator for stochastic rounding.

        Returns:
            Integer codes of ``values``' shape.
        """
        raise UnsupportedError(f"kind='{self.name}' has no element-wise codes")

    def decode(self, codes: Tensor, scale: Tensor, zp: Tensor | None, scheme: Scheme) -> Tensor:
        """Float32 values of unsigned codes (inverse of :meth:`encode` up to rounding).

        Args:
            codes: what :meth:`encode` returned; the other arguments as given to it.
            scale: see :meth:`encode`.
            zp: see :meth:`encode`.
            scheme: see :meth:`encode`.

        Returns:
            float32 values.
        """
        raise UnsupportedError(f"kind='{self.name}' has no element-wise codes")

    def round_trip(
        self, values: Tensor, scale: Tensor, zp: Tensor | None, scheme: Scheme
    ) -> tuple[Tensor, Tensor]:
        """Codes and dequantized values of ``values`` (GPTQ's column step, MSE search).

        Returns:
            ``(uint8 codes, float32 values)`` (arguments as for :meth:`encode`).
        """
        u = self.encode(values, scale, zp, scheme)
        return u.to(torch.uint8), self.decode(u, scale, zp, scheme)


def scale_bytes(scheme: Scheme) -> int:
    """Bytes of one stored scale (or codebook entry) of ``scheme``.

    Args:
        scheme: the scheme.

    Returns:
        The item size of its ``scale_dtype``.
    """
    return SCALE_DTYPES[scheme.scale_dtype].itemsize
