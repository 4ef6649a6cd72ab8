"""Which quantized module a float layer becomes, and why a weight layer cannot be quantized."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn
from torch.nn.modules.conv import _ConvTransposeNd
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from quantbalance.nn.keep_forward import KeepsForward, keep_forward_type
from quantbalance.nn.layout import hf_conv1d, layout_of
from quantbalance.nn.modules import REGISTRY, QLinear, QuantModule

SUPPORTED = (
    "Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d (groups=1), Embedding, transformers' Conv1D, "
    "and their subclasses"
)


def quantized_type(module: nn.Module) -> type[QuantModule] | None:
    """The quantized class for ``module``, or None if it has none.

    Exact ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (zero padding) / ``nn.Embedding`` get
    the registered class (whose forward deploy engines know); transformers' ``Conv1D`` becomes a
    ``QLinear`` (its forward is a linear layer with a transposed weight); every other supported
    weight layer is quantized in place and keeps its own forward
    (:func:`~quantbalance.nn.keep_forward.keep_forward_type`).

    Args:
        module: a float module.

    Returns:
        The QuantModule subclass, or None (see :func:`unsupported_reason`).
    """
    if isinstance(module, QuantModule):
        return None
    exact = REGISTRY.get(type(module))
    if exact is not None and getattr(module, "padding_mode", "zeros") == "zeros":
        return exact
    if type(module) is hf_conv1d():
        return QLinear
    if unsupported_reason(module) is not None:
        return None
    return keep_forward_type(type(module))


def engine_layer(module: nn.Module) -> nn.Module | None:
    """The torch layer whose own forward ``module``'s quantized form computes, if any.

    Deploy engines and the latency model know the kernels of exact Linear/Conv1d/Conv2d/
    Embedding layers; transformers' ``Conv1D`` becomes the equivalent ``nn.Linear`` (weight
    transposed, a copy). Layers quantized in place run their own forward (None): engines run
    them simulated, in float.

    Args:
        module: a float weight layer.

    Returns:
        The module itself, an equivalent ``nn.Linear``, or None.
    """
    qtype = quantized_type(module)
    if qtype is None or issubclass(qtype, KeepsForward):
        return None
    if type(module) is not hf_conv1d():
        return module
    w = module.weight.detach()  # (in, out)
    lin = nn.Linear(w.shape[0], w.shape[1], bias=module.bias is not None, device=w.device)
    lin.weight = nn.Parameter(w.t().contiguous(), requires_grad=False)
    if module.bias is not None:
        lin.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return lin


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` has no quantized form, or None if it has one.

    Args:
        module: any module.

    Returns:
        A short reason, e.g. ``"LSTM has no quantized module"``.
    """
    if isinstance(module, NonDynamicallyQuantizableLinear):
        return (
            "MultiheadAttention's out_proj: its weight is read by MultiheadAttention's own "
            "forward, which never calls the layer (so its input cannot be quantized)"
        )
    if layout_of(module) is None:
        if isinstance(module, _ConvTransposeNd):
            return f"transposed convolution with groups={module.groups} (groups=1 only)"
        return f"{type(module).__name__} has no quantized module (supported: {SUPPORTED})"
    if not isinstance(module._parameters.get("weight"), nn.Parameter):
        return f"{type(module).__name__}'s weight is not a plain parameter (parametrized?)"
    return None


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantModule]]:
    """Every quantized layer of ``model``, whatever its class, in model order.

    Use this (not ``isinstance`` of ``QLinear``/``QConv2d``) to find quantized weights: layers
    quantized in place are instances of their own class and of ``QuantModule``.

    Args:
        model: any model.

    Yields:
        ``(name, module)`` pairs; ``module.qweight`` is its QuantizedTensor.
    """
    for name, mod in model.named_modules():
        if isinstance(mod, QuantModule):
            yield name, mod
