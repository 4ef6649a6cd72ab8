"""GGML-native schemes: quantbalance schemes whose codes *are* llama.cpp's block formats.

A llama.cpp tensor stores blocks of 32 weights along each row (the input axis) with an fp16
scale ``d`` (and, for the ``_1`` types, an fp16 minimum ``m``):

=======  =====================================  ===============================================
type     llama.cpp dequantization                quantbalance scheme (codes ``u`` unsigned)
=======  =====================================  ===============================================
Q8_0     ``d · q``, q int8                      ``Scheme(8, PerGroup(32), symmetric, fp16)``:
                                                ``q = u - 128``, ``d = scale`` (exact)
Q5_0     ``d · (u - 16)``, u 5-bit               ``Scheme(5, PerGroup(32), symmetric, fp16)``
Q4_0     ``d · (u - 8)``, u 4-bit                ``Scheme(4, PerGroup(32), symmetric, fp16)``
Q5_1     ``d · u + m``                           ``Scheme(5, PerGroup(32), asymmetric, fp16)``:
                                                ``d = scale``, ``m = fp16(-(zp - qmin)·scale)``
Q4_1     ``d · u + m``                           ``Scheme(4, PerGroup(32), asymmetric, fp16)``
=======  =====================================  ===============================================

The ``_0`` types reproduce quantbalance's dequantized weights bit for bit. For the ``_1`` types
the block minimum ``m = -zero_point·scale`` is rounded to fp16, so each weight may differ from the
simulation by at most half an fp16 ulp of ``m`` (≤ ``2^-11·|m|``); the exporter measures and
reports that bound. The k-quants (Q4_K, Q6_K: 256-element super-blocks with 6-bit sub-scales)
have no quantbalance scheme and the ``gguf`` package cannot encode them, so they are not offered.
"""

from __future__ import annotations

from quantbalance.formats.granularity import PerGroup
from quantbalance.formats.scheme import Scheme

#: llama.cpp block length of every type above.
BLOCK = 32

#: ggml type name -> the quantbalance scheme that produces exactly its codes.
GGML_SCHEMES: dict[str, Scheme] = {
    "Q8_0": Scheme(8, granularity=PerGroup(size=BLOCK), scale_dtype="float16"),
    "Q5_0": Scheme(5, granularity=PerGroup(size=BLOCK), scale_dtype="float16"),
    "Q4_0": Scheme(4, granularity=PerGroup(size=BLOCK), scale_dtype="float16"),
    "Q5_1": Scheme(
        5, symmetric=False, signed=False, granularity=PerGroup(size=BLOCK), scale_dtype="float16"
    ),
    "Q4_1": Scheme(
        4, symmetric=False, signed=False, granularity=PerGroup(size=BLOCK), scale_dtype="float16"
    ),
}

#: Types whose dequantization equals quantbalance's bit for bit.
EXACT = frozenset({"Q8_0", "Q5_0", "Q4_0"})


def ggml_type_name(scheme: Scheme, shape: tuple[int, ...]) -> str | None:
    """The llama.cpp type that stores ``scheme``'s codes for a tensor of ``shape``, if any.

    Signedness does not matter (codes differ by a constant offset that the type absorbs);
    everything else must match: uniform kind, bits, symmetry, groups of 32 along the last axis
    dividing the row, fp16 scales.

    Args:
        scheme: a quantbalance scheme.
        shape: the quantized tensor's shape (rows, row length).

    Returns:
        ``Q8_0``, ``Q5_0``, ``Q4_0``, ``Q5_1``, ``Q4_1`` or None.

    >>> ggml_type_name(GGML_SCHEMES["Q4_0"], (64, 576))
    'Q4_0'
    """
    g = scheme.granularity
    if not scheme.format_kind.integer or scheme.scale_dtype != "float16":
        return None
    if not isinstance(g, PerGroup):
        return None
    if g.size != BLOCK or g.axis % len(shape) != len(shape) - 1 or shape[-1] % BLOCK:
        return None
    suffix = "0" if scheme.symmetric else "1"
    name = f"Q{scheme.bits}_{suffix}"
    return name if name in GGML_SCHEMES else None
