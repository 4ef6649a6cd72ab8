"""Scheme: *what* a quantized number is (bits, kind, symmetry, granularity, rounding).

How codes are packed (storage) and which algorithm chooses them are separate concerns.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from quantbalance.formats.config import FrozenConfig
from quantbalance.formats.granularity import Granularity, PerChannel, describe
from quantbalance.formats.kinds import KINDS, FormatKind


class Scheme(FrozenConfig):
    """A validated, immutable quantization scheme.

    Args:
        bits: code width, 1–8; a kind may fix it (``nf4``: 4, fp8: 8, ``fp4_e2m1``: 4).
        kind: the format kind's name, one of ``formats.kinds.KINDS`` (``uniform``: affine
            integer grid; ``nf4``, ``codebook``, ``fp8_e4m3``/``fp8_e5m2``, ``fp4_e2m1``: see
            ``formats.kinds``).
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
    kind: str = "uniform"
    symmetric: bool = True
    signed: bool = True
    granularity: Granularity = Field(default_factory=PerChannel)
    rounding: Literal["nearest", "stochastic"] = "nearest"
    scale_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    positional: ClassVar[tuple[str, ...]] = ("bits",)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
        return kind

    @model_validator(mode="after")
    def _check_combination(self) -> Scheme:
        self.format_kind.check(self)
        return self

    @property
    def format_kind(self) -> FormatKind:
        """The object holding this scheme's kind's behaviour (``formats.kinds``)."""
        return KINDS[self.kind]

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
        return self.format_kind.label(self, describe(self.granularity))
