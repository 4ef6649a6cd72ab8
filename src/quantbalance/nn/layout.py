"""Weight layouts: how a float layer's weight maps to the 2-D matrix that gets quantized.

Every quantized weight is stored as a matrix whose rows are the layer's outputs, so per-channel
scales are per output and groups run along the inputs:

==================  =========================  ============================================
layout              float weight               quantized matrix
==================  =========================  ============================================
``rows``            Linear ``(out, in)``,      the weight itself
                    Embedding ``(num, dim)``
``conv``            Conv1d/2d/3d               ``(out, in/groups · k...)``
                    ``(out, in/groups, k...)``
``transposed``      transformers ``Conv1D``    ``(out, in)``: the transpose
                    ``(in, out)``
``conv_transpose``  ConvTranspose1d/2d/3d      ``(out, in · k...)``
                    ``(in, out, k...)``,
                    ``groups=1``
==================  =========================  ============================================

A layer is recognised by what it *is* (``isinstance`` of a torch class, or of transformers'
``Conv1D`` when transformers is loaded), never by its class name, so subclasses are included.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

#: torch classes whose subclasses are weight layers, most specific first, with their layout.
FAMILIES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "rows"),
    (nn.Embedding, "rows"),
    (_ConvTransposeNd, "conv_transpose"),
    (_ConvNd, "conv"),
)

_PUBLIC = frozenset({
    nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
})  # fmt: skip


def hf_conv1d() -> type[nn.Module] | None:
    """transformers' ``Conv1D`` class if transformers is loaded (no import otherwise).

    Returns:
        The class, or None (then no model in this process can hold one).
    """
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None)


def layout_of(module: nn.Module) -> str | None:
    """The layout of ``module``'s weight, or None if it is no supported weight layer.

    Args:
        module: any module.

    Returns:
        ``rows``, ``conv``, ``transposed``, ``conv_transpose`` or None.
    """
    conv1d = hf_conv1d()
    if conv1d is not None and isinstance(module, conv1d):
        return "transposed"
    for cls, layout in FAMILIES:
        if isinstance(module, cls):
            if layout == "conv_transpose" and getattr(module, "groups", 1) != 1:
                return None
            return layout
    return None


def family(module: nn.Module) -> str:
    """The torch class a weight layer behaves as, for Plan ``layer_types`` (e.g. ``Conv2d``).

    Args:
        module: a weight layer (transformers' ``Conv1D`` counts as ``Linear``).

    Returns:
        The name of the nearest public ``torch.nn`` weight class in its MRO, else its own
        class name.
    """
    if layout_of(module) == "transposed":
        return "Linear"
    for cls in type(module).__mro__:
        if cls in _PUBLIC:
            return cls.__name__
    return type(module).__name__


def to_matrix(layout: str, weight: torch.Tensor) -> torch.Tensor:
    """The 2-D matrix (rows = outputs) stored for ``weight``.

    Args:
        layout: see :func:`layout_of`.
        weight: the float weight.

    Returns:
        A 2-D view or copy.
    """
    if layout == "transposed":
        return weight.t()
    if layout == "conv_transpose":
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)
    return weight.reshape(weight.shape[0], -1) if weight.dim() > 2 else weight


def from_matrix(layout: str, matrix: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Invert :func:`to_matrix`: the float weight of ``shape`` from its matrix.

    Args:
        layout: see :func:`layout_of`.
        matrix: the 2-D matrix.
        shape: the float weight's shape.

    Returns:
        The weight in ``shape``.
    """
    if layout == "transposed":
        return matrix.t()
    if layout == "conv_transpose":
        return matrix.reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1)
    return matrix.reshape(shape)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight a quantized module stores (see the module table), detached.

    Args:
        module: a supported float module, or a quantized one (its dequantized matrix).

    Returns:
        The 2-D weight that gets quantized.
    """
    layout = getattr(module, "weight_layout", None) or layout_of(module)
    assert layout is not None, f"{type(module).__name__} is not a supported weight layer"
    return to_matrix(layout, module.weight.detach())


def plain_forward(module: nn.Module) -> bool:
    """Whether ``module`` runs the forward of the torch class it derives from.

    Algorithms that model a layer's computation (GPTQ's input rows, AdaRound, bias correction,
    AWQ/SmoothQuant scale folding) only handle such layers; a subclass with its own forward
    (padding, reshapes) is quantized by round to nearest and keeps that forward.

    Args:
        module: a weight layer.

    Returns:
        True if its class does not override ``forward`` (transformers' ``Conv1D`` included).
    """
    forward = type(module).forward
    conv1d = hf_conv1d()
    if conv1d is not None and isinstance(module, conv1d):
        return forward is conv1d.forward
    return any(forward is cls.forward for cls in type(module).__mro__ if cls in _PUBLIC)
