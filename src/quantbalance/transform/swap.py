"""Module surgery: find quantizable layers and swap modules by name."""

from __future__ import annotations

from torch import nn

from quantbalance.nn import QuantModule, family, quantized_type


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) with ``new``.

    Args:
        model: the root module.
        name: dotted submodule name.
        new: the replacement.
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantizable_layers(model: nn.Module) -> dict[str, str]:
    """Float weight layers that have a quantized form (subclasses included), in model order.

    Args:
        model: the model.

    Returns:
        name -> the torch class the layer behaves as (``Conv2d`` for a ``Conv2d`` subclass,
        ``Linear`` for transformers' ``Conv1D``): what Plan ``layer_types`` match.
    """
    return {n: family(m) for n, m in model.named_modules() if quantized_type(m) is not None}


def unsupported_layers(model: nn.Module) -> dict[str, str]:
    """Modules that own parameters but have no quantized counterpart (kept in float).

    Args:
        model: the model.

    Returns:
        name -> class name (norms included: they are cheap and stay float by design).
    """
    out = {}
    inside = [n for n, m in model.named_modules() if isinstance(m, QuantModule)]
    for n, m in model.named_modules():
        inside_quantized = any(n == q or n.startswith(q + ".") for q in inside)
        if quantized_type(m) is not None or not n or inside_quantized:
            continue
        if any(True for _ in m.parameters(recurse=False)):
            out[n] = type(m).__name__
    return out
