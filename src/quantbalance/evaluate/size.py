"""Exact model sizes: packed quantized weights plus every remaining float tensor."""

from __future__ import annotations

from torch import nn

from quantbalance.args import checked
from quantbalance.nn import QuantModule


@checked
def model_nbytes(model: nn.Module) -> int:
    """Bytes to store ``model``: ``QuantizedTensor.nbytes`` of quantized layers plus the bytes of
    every other parameter and persistent buffer (shared tensors counted once).

    Args:
        model: a float or quantized model.

    Returns:
        The byte count.
    """
    total = 0
    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, QuantModule):
            total += mod.qweight.nbytes
    for t in list(model.parameters()) + [b for _, b in _persistent_buffers(model)]:
        key = t.data_ptr()
        if key in seen or t.numel() == 0:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _persistent_buffers(model: nn.Module) -> list[tuple[str, object]]:
    out = []
    for mod_name, mod in model.named_modules():
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        for name, buf in mod.named_buffers(recurse=False):
            if name not in skip and buf is not None:
                out.append((f"{mod_name}.{name}", buf))
    return out
