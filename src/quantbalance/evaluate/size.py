"""Exact model sizes: packed quantized weights plus every remaining float tensor."""

from __future__ import annotations

import torch
from torch import nn

from quantbalance.args import checked


@checked
def model_nbytes(model: nn.Module) -> int:
    """Bytes to store ``model``: every parameter and persistent buffer, shared tensors once.

    A quantized layer's weight is its ``qweight_*`` buffers (packed codes, scales, zero points,
    codebook), so this is ``QuantizedTensor.nbytes`` for quantized layers plus the bytes of
    every other tensor; the dequantized cache is a non-persistent buffer and does not count.

    Args:
        model: a float or quantized model.

    Returns:
        The byte count.
    """
    total = 0
    seen: set[int] = set()
    for t in list(model.parameters()) + _persistent_buffers(model):
        key = t.data_ptr()
        if key in seen or t.numel() == 0:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _persistent_buffers(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for mod in model.modules():
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        for name, buf in mod.named_buffers(recurse=False):
            if name not in skip and buf is not None:
                out.append(buf)
    return out
