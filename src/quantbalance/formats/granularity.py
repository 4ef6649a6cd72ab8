"""Granularity: which elements share one scale.

Every granularity lowers to the same thing, a *block view*: the tensor rearranged as a matrix
``(n_blocks, block_len)`` whose rows are the blocks that share one set of quantization
parameters, plus the *grid shape* in which those per-block parameters are stored.

==========================  =====================================  ==============================
granularity                  blocks of a tensor of shape S          parameter grid shape
==========================  =====================================  ==============================
``PerTensor()``              one block: all of S                    ``()``
``PerChannel(axis=a)``       one block per index along ``a``        ``(S[a],)``
``PerToken()``               one block per row of the last axis     ``S[:-1]``
``PerGroup(size=g, axis=a)`` runs of ``g`` along ``a``, per index   ``S`` with ``a`` moved last and
                             of every other axis                    replaced by ``ceil(S[a]/g)``
==========================  =====================================  ==============================

When ``S[a]`` is not a multiple of ``g`` the last group of each row is *partial* (SmolLM2's hidden
size 576 in groups of 128 ends with a group of 64). It gets its own scale computed from its own
elements only: the block view pads it by repeating its last element (which leaves min, max and
absmax unchanged) and returns a mask of the real elements for statistics that would be biased
by the padding.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from quantbalance.errors import ConfigError
from quantbalance.formats.config import FrozenConfig

#: Most elements quantized or dequantized at once (bounds the temporaries; see chunk_slices).
CHUNK_ELEMENTS = 2**22


class PerTensor(FrozenConfig):
    """One scale (and zero point) for the whole tensor."""

    type: Literal["per_tensor"] = "per_tensor"


class PerChannel(FrozenConfig):
    """One scale per index along ``axis`` (axis 0 = output channels of Linear/Conv weights).

    ``PerChannel(0)`` is ``PerChannel(axis=0)``.
    """

    type: Literal["per_channel"] = "per_channel"
    axis: int = 0
    positional: ClassVar[tuple[str, ...]] = ("axis",)


class PerToken(FrozenConfig):
    """One scale per row of the last axis: per token for activations of shape (..., hidden)."""

    type: Literal["per_token"] = "per_token"


class PerGroup(FrozenConfig):
    """One scale per run of ``size`` consecutive elements along ``axis``.

    The last run of each row may be shorter (a partial group) and has its own scale.
    ``PerGroup(128)`` is ``PerGroup(size=128)``; ``PerGroup(128, 0)`` adds ``axis=0``.
    """

    type: Literal["per_group"] = "per_group"
    size: int = Field(gt=0, description="elements per group, > 0")
    axis: int = -1
    positional: ClassVar[tuple[str, ...]] = ("size", "axis")


Granularity = Annotated[PerTensor | PerChannel | PerToken | PerGroup, Field(discriminator="type")]


def _axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ConfigError(f"{what}: axis={axis} is out of range for a tensor of {ndim} dims")
    return axis % ndim


def grid_shape(shape: tuple[int, ...], gran: Granularity) -> tuple[int, ...]:
    """Shape in which per-block parameters (scale, zero point) are stored.

    Args:
        shape: the tensor's shape.
        gran: the granularity.

    Returns:
        The parameter grid shape (see the module table).

    >>> grid_shape((8, 576), PerGroup(size=128))
    (8, 5)
    """
    shape = tuple(shape)
    if isinstance(gran, PerTensor):
        return ()
    if isinstance(gran, PerChannel):
        return (shape[_axis(gran.axis, len(shape), "PerChannel")],)
    if isinstance(gran, PerToken):
        return shape[:-1]
    a = _axis(gran.axis, len(shape), "PerGroup")
    rest = shape[:a] + shape[a + 1 :]
    return (*rest, math.ceil(shape[a] / gran.size))


def to_blocks(x: torch.Tensor, gran: Granularity) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rearrange ``x`` as ``(n_blocks, block_len)``, one row per parameter block.

    Args:
        x: any tensor with at least one dimension (0-d only for PerTensor).
        gran: the granularity.

    Returns:
        ``(blocks, mask)``: ``blocks`` has ``prod(grid_shape)`` rows in the grid's row-major
        order; ``mask`` is None when every entry is real, else a bool tensor marking the real
        entries (padding exists only for partial groups).
    """
    if isinstance(gran, PerTensor):
        return x.reshape(1, -1), None
    if isinstance(gran, PerChannel):
        a = _axis(gran.axis, x.dim(), "PerChannel")
        return x.movedim(a, 0).reshape(x.shape[a], -1), None
    if isinstance(gran, PerToken):
        return x.reshape(-1, x.shape[-1]), None
    a = _axis(gran.axis, x.dim(), "PerGroup")
    xm = x.movedim(a, -1)
    n = xm.shape[-1]
    g = gran.size
    pad = (-n) % g
    if pad == 0:
        return xm.reshape(-1, g), None
    rows = xm.reshape(-1, n)
    padded = torch.cat([rows, rows[:, -1:].expand(-1, pad)], dim=1)
    mask = torch.ones(rows.shape[0], n + pad, dtype=torch.bool, device=x.device)
    mask[:, n:] = False
    return padded.reshape(-1, g), mask.reshape(-1, g)


def from_blocks(blocks: torch.Tensor, shape: tuple[int, ...], gran: Granularity) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: put block rows back into a tensor of ``shape``.

    Args:
        blocks: ``(n_blocks, block_len)`` as produced by ``to_blocks`` (padding included).
        shape: the original tensor shape.
        gran: the granularity used by ``to_blocks``.

    Returns:
        A tensor of ``shape``.
    """
    shape = tuple(shape)
    if isinstance(gran, PerTensor | PerToken):
        return blocks.reshape(shape)
    if isinstance(gran, PerChannel):
        a = _axis(gran.axis, len(shape), "PerChannel")
        moved = (shape[a], *shape[:a], *shape[a + 1 :])
        return blocks.reshape(moved).movedim(0, a)
    a = _axis(gran.axis, len(shape), "PerGroup")
    moved = (*shape[:a], *shape[a + 1 :], shape[a])
    n = shape[a]
    rows = blocks.reshape(-1, math.ceil(n / gran.size) * gran.size)[:, :n]
    return rows.reshape(moved).movedim(-1, a)


def expand_params(p: torch.Tensor, shape: tuple[int, ...], gran: Granularity) -> torch.Tensor:
    """Broadcast a per-block parameter grid to the full tensor shape.

    Args:
        p: parameters in ``grid_shape(shape, gran)``.
        shape: the tensor shape.
        gran: the granularity.

    Returns:
        A tensor of ``shape`` where each element holds its block's parameter.
    """
    blocks_len = _block_len(shape, gran)
    rows = p.reshape(-1, 1).expand(-1, blocks_len)
    return from_blocks(rows, shape, gran)


def _block_len(shape: tuple[int, ...], gran: Granularity) -> int:
    if isinstance(gran, PerGroup):
        return gran.size
    n_blocks = math.prod(grid_shape(shape, gran))
    return math.prod(shape) // max(n_blocks, 1)


def describe(gran: Granularity) -> str:
    """Short human name of a granularity, e.g. ``g128`` or ``per-channel``.

    Args:
        gran: the granularity.

    Returns:
        A short label for tables.
    """
    if isinstance(gran, PerGroup):
        return f"g{gran.size}"
    return {"per_tensor": "per-tensor", "per_channel": "per-channel", "per_token": "per-token"}[
        gran.type
    ]


def chunk_slices(
    shape: tuple[int, ...], gran: Granularity, limit: int
) -> tuple[int, list[slice]] | None:
    """Slices of one axis that split a tensor into pieces of whole blocks (bounds temporaries).

    Slicing the tensor's axis ``axis`` by ``s`` keeps every block whole, and the piece's
    parameters are exactly ``grid[s]`` (the first axis of the parameter grid follows ``axis``):
    ``PerChannel(axis=a)`` slices ``a``; ``PerToken`` and ``PerGroup`` along any axis but 0
    slice axis 0; ``PerGroup(axis=0)`` slices axis 1.

    Args:
        shape: the tensor's shape.
        gran: the granularity.
        limit: most elements per piece (a piece holds at least one index of ``axis``).

    Returns:
        ``(axis, slices)``, or None when the tensor fits in ``limit`` or has no such axis
        (``PerTensor``, 1-D ``PerToken``/``PerGroup``).

    >>> chunk_slices((8, 576), PerGroup(size=128), limit=2000)
    (0, [slice(0, 3, None), slice(3, 6, None), slice(6, 8, None)])
    """
    shape = tuple(shape)
    total = math.prod(shape)
    if total <= limit or isinstance(gran, PerTensor) or not shape:
        return None
    if isinstance(gran, PerChannel):
        axis = _axis(gran.axis, len(shape), "PerChannel")
    elif len(shape) < 2:
        return None
    elif isinstance(gran, PerGroup) and _axis(gran.axis, len(shape), "PerGroup") == 0:
        axis = 1
    else:
        axis = 0
    n = shape[axis]
    step = max(1, limit // max(total // max(n, 1), 1))
    return axis, [slice(i, min(i + step, n)) for i in range(0, n, step)]
