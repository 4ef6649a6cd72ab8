"""Dense bit packing of b-bit codes (b = 1..8) into bytes.

Layout (every width): codes are unsigned offsets ``u = q - qmin`` in ``[0, 2^b - 1]``, taken in
row-major order of the original tensor, and written into one little-endian bit stream: code ``i``
occupies bits ``[i*b, (i+1)*b)`` of the stream, least significant bit first, where bit ``k`` of
the stream is bit ``k % 8`` of byte ``k // 8``. The last byte is zero-padded.

Bytes for ``n`` codes: ``ceil(n * b / 8)``; bits per weight: exactly ``b``. For b = 4 this is the
usual nibble layout (element ``2i`` in the low nibble of byte ``i``); for b = 8 one code per byte.
"""

from __future__ import annotations

import math

import torch

from quantbalance.errors import UnsupportedError


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits.

    Args:
        n: number of codes.
        bits: code width, 1..8.

    Returns:
        ``ceil(n * bits / 8)``.
    """
    return math.ceil(n * bits / 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes into a flat uint8 tensor.

    Args:
        codes: integer tensor with values in ``[0, 2**bits - 1]`` (any shape; flattened).
        bits: code width, 1..8.

    Returns:
        uint8 tensor of ``packed_nbytes(codes.numel(), bits)`` bytes.
    """
    if not 1 <= bits <= 8:
        raise UnsupportedError(f"bits={bits}: packing supports 1..8 bits")
    u = codes.reshape(-1).to(torch.uint8)
    n = u.numel()
    if bits == 8:
        return u.clone()
    if 8 % bits == 0:
        per = 8 // bits
        pad = (-n) % per
        if pad:
            u = torch.cat([u, u.new_zeros(pad)])
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=u.device)
        return (u.reshape(-1, per) << shifts).sum(dim=1, dtype=torch.uint8)
    bit_idx = torch.arange(bits, dtype=torch.uint8, device=u.device)
    stream = ((u.unsqueeze(1) >> bit_idx) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    shifts = torch.arange(8, dtype=torch.uint8, device=u.device)
    return (stream.reshape(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`.

    Args:
        packed: uint8 tensor from ``pack``.
        bits: code width, 1..8.
        n: number of codes to read.

    Returns:
        uint8 tensor of ``n`` codes.
    """
    if not 1 <= bits <= 8:
        raise UnsupportedError(f"bits={bits}: packing supports 1..8 bits")
    p = packed.reshape(-1).to(torch.uint8)
    if p.numel() != packed_nbytes(n, bits):
        raise UnsupportedError(
            f"packed buffer has {p.numel()} bytes; {n} codes of {bits} bits need "
            f"{packed_nbytes(n, bits)}"
        )
    if bits == 8:
        return p.clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=p.device)
        return ((p.unsqueeze(1) >> shifts) & mask).reshape(-1)[:n]
    shifts = torch.arange(8, dtype=torch.uint8, device=p.device)
    stream = ((p.unsqueeze(1) >> shifts) & 1).reshape(-1)[: n * bits]
    weights = (1 << torch.arange(bits, device=p.device)).to(torch.uint8)
    return (stream.reshape(n, bits) * weights).sum(dim=1, dtype=torch.uint8)
