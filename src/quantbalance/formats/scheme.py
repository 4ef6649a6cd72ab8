"""Scheme: *what* a quantized number is (bits, kind, symmetry, granularity, rounding).

How codes are packed (storage) and which algorithm chooses them are separate concerns.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from quantbalance.formats.config import FrozenConfig
from quantbalance.formats.granularity import Granularity, PerChannel, describe

Kind = Literal["uniform", "nf4", "codebook", "fp8_e4m3", "fp8_e5m2"]


class Scheme(FrozenConfig):
    """A validated, immutable quantization scheme.

    Args:
        bits: code width. 1–8 for ``uniform`` and ``codebook`` (1-bit uniform = binary weights
            ``±scale``), 4 for ``nf4``, 8 for the fp8 kinds.
        kind: ``uniform`` (affine integer grid), ``nf4`` (normal-float table), ``codebook``
            (k-means lookup table per block), ``fp8_e4m3`` / ``fp8_e5m2`` (float8, block scale).
        symmetric: uniform only. True: zero point fixed (0 for signed codes), range ``±absmax``.
            False: range ``[min(x.min, 0), max(x.max, 0)]`` with an integer zero point.
        signed: uniform only. Codes in ``[-2^(b-1), 2^(b-1)-1]`` (True) or ``[0, 2^b-1]`` (False).
        granularity: which elements share a scale (see ``formats.granularity``).
        rounding: ``nearest`` (round half to even) or ``stochastic`` (unbiased, seeded).
        scale_dtype: dtype in which scales (and codebooks) are stored.

    Example:
        >>> Scheme(4, granularity=PerGroup(size=128)).label
        'int4-g128'
    """

    bits: int = Field(ge=1, le=8)
    kind: Kind = "uniform"
    symmetric: bool = True
    signed: bool = True
    granularity: Granularity = Field(default_factory=PerChannel)
    rounding: Literal["nearest", "stochastic"] = "nearest"
    scale_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    positional: ClassVar[tuple[str, ...]] = ("bits",)

    @model_validator(mode="after")
    def _check_combination(self) -> Scheme:
        if self.kind == "nf4" and self.bits != 4:
            raise ValueError(f"kind='nf4' needs bits=4, got bits={self.bits}")
        if self.kind.startswith("fp8") and self.bits != 8:
            raise ValueError(f"kind='{self.kind}' needs bits=8, got bits={self.bits}")
        if self.kind == "uniform" and self.bits == 1 and not self.symmetric:
            raise ValueError(
                "bits=1 uniform is binary (±scale) and must be symmetric; "
                "use symmetric=True or bits>=2"
            )
        return self

    @property
    def qmin(self) -> int:
        """Smallest integer code of a uniform scheme."""
        return -(2 ** (self.bits - 1)) if self.signed and self.bits > 1 else 0

    @property
    def qmax(self) -> int:
        """Largest integer code of a uniform scheme."""
        return 2 ** (self.bits - 1) - 1 if self.signed and self.bits > 1 else 2**self.bits - 1

    @property
    def n_levels(self) -> int:
        """Number of distinct codes, ``2**bits``."""
        return 2**self.bits

    @property
    def label(self) -> str:
        """Short name for tables, e.g. ``int8-per-channel``, ``int4-g128-asym``, ``nf4-g64``."""
        gran = describe(self.granularity)
        if self.kind == "uniform":
            base = f"{'int' if self.signed else 'uint'}{self.bits}-{gran}"
            return base if self.symmetric else f"{base}-asym"
        if self.kind == "codebook":
            return f"lut{self.bits}-{gran}"
        return f"{self.kind}-{gran}"
