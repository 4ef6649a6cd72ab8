"""QuantizedTensor codes -> llama.cpp block bytes (``formats/ggml.py`` says which types).

Block layouts (32 weights, little-endian; ``u`` = quantbalance's unsigned codes):

* Q8_0: ``d`` fp16, 32 × int8 ``u - 128``;
* Q4_0 / Q4_1: ``d`` fp16 (``m`` fp16), 16 bytes: weight ``j`` in the low nibble of byte ``j``,
  weight ``j + 16`` in its high nibble;
* Q5_0 / Q5_1: ``d`` (``m``), 4 bytes ``qh`` (bit ``j`` = bit 4 of weight ``j``), 16 bytes of
  low nibbles as for Q4.

Every encoded tensor is decoded again with the ``gguf`` package's own dequantizer and compared with
``QuantizedTensor.dequantize()`` (:func:`check`), so a layout mistake can never ship silently.
"""

from __future__ import annotations

import numpy as np
import torch

from quantbalance.errors import UnsupportedError
from quantbalance.formats import QuantizedTensor
from quantbalance.formats.ggml import BLOCK, EXACT, ggml_type_name


def _nibbles(u: np.ndarray) -> np.ndarray:
    """``(n, 32)`` codes -> ``(n, 16)`` bytes: low nibble ``j``, high nibble ``j + 16``."""
    lo, hi = u[:, :16] & 0x0F, u[:, 16:] & 0x0F
    return (lo | (hi << 4)).astype(np.uint8)


def _high_bits(u: np.ndarray) -> np.ndarray:
    """``(n, 32)`` 5-bit codes -> ``(n, 4)`` bytes holding bit 4 of each, little-endian."""
    return np.packbits((u >> 4) & 1, axis=-1, bitorder="little").reshape(-1, 4)


def _fp16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def encode(qt: QuantizedTensor, where: str) -> tuple[str, np.ndarray]:
    """The llama.cpp type and block bytes of a quantized 2-D weight.

    Args:
        qt: the quantized weight ``(rows, row_length)``.
        where: the layer name for messages.

    Returns:
        ``(type name, uint8 array (rows, row_length / 32 · block bytes))``.

    Raises:
        UnsupportedError: the scheme is not a GGML-native one (see ``GGML_SCHEMES``).
    """
    shape = tuple(qt.shape)
    name = ggml_type_name(qt.scheme, shape) if len(shape) == 2 else None
    if name is None:
        raise UnsupportedError(
            f"{where}: {qt.scheme.label} (scale {qt.scheme.scale_dtype}) is no llama.cpp type; "
            "use a GGML-native scheme (quantbalance.formats.ggml.GGML_SCHEMES: Q8_0, Q5_0, "
            "Q4_0, Q5_1, Q4_1 — groups of 32 along the rows, fp16 scales)"
        )
    rows = shape[0]
    u = qt.codes().reshape(-1, BLOCK).numpy().astype(np.uint8)
    assert qt.scale is not None
    d = qt.scale.float().reshape(-1).numpy()
    parts = [_fp16_bytes(d)]
    if name.endswith("_1"):
        assert qt.zero_point is not None
        zp = qt.zero_point.reshape(-1).to(torch.int32).numpy() - qt.scheme.qmin
        parts.append(_fp16_bytes(-zp.astype(np.float32) * d))
    if name == "Q8_0":
        parts.append((u.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if qt.scheme.bits == 5:
            parts.append(_high_bits(u))
        parts.append(_nibbles(u))
    blocks = np.concatenate(parts, axis=1)
    return name, np.ascontiguousarray(blocks.reshape(rows, -1))


def check(qt: QuantizedTensor, name: str, blocks: np.ndarray, where: str) -> float:
    """Decode ``blocks`` with the ``gguf`` package and compare with ``qt.dequantize()``.

    Args:
        qt: the quantized weight.
        name: its llama.cpp type name.
        blocks: the encoded bytes.
        where: the layer name for messages.

    Returns:
        The largest absolute difference (0.0 for the exact ``_0`` types).

    Raises:
        UnsupportedError: the difference exceeds the type's bound (a bug, never expected).
    """
    import gguf  # deferred: gguf is an optional extra

    got = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name])
    want = qt.dequantize().float().numpy().reshape(got.shape)
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    if name in EXACT:
        bound = 0.0
    else:  # half an fp16 ulp of the block minimum |m| <= (qmax - qmin) * scale
        assert qt.scale is not None
        span = (qt.scheme.qmax - qt.scheme.qmin) * float(qt.scale.float().abs().max())
        bound = span * 2.0**-11 + 1e-12
    if diff > bound:
        raise UnsupportedError(
            f"{where}: {name} blocks decode {diff:.3g} away from the simulation (bound {bound:.3g})"
        )
    return diff
