"""Weight layers quantized in place: the layer's own ``forward`` runs on the quantized weight.

A subclass of ``nn.Linear`` or ``nn.Conv2d`` that computes "same" padding or reshapes in its own
``forward`` (timm's ``Conv2dSame``, models ported from TensorFlow), a ``Conv3d`` or a transposed
convolution has no quantized class that re-implements its forward. Instead the layer is copied
without its float weight and its class becomes ``Quantized<Class>``, a subclass of
:class:`KeepsForward` and of the layer's own class: ``weight`` is then the dequantized weight of
the :class:`~quantbalance.nn.QuantModule` buffers, and ``forward`` quantizes the input (when the
spec has an activation scheme) and calls the class's own ``forward``. Everything else about the
layer (attributes, methods, submodules, hooks) is kept.

This is the approach of torchao and optimum-quanto ("swap the weight, keep the module").
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from quantbalance.formats import QuantizedTensor
from quantbalance.nn.act import ActQuantizer
from quantbalance.nn.layout import layout_of
from quantbalance.nn.modules import QuantModule

_TYPES: dict[type[nn.Module], type[KeepsForward]] = {}


class KeepsForward(QuantModule):
    """Mixin of the in-place quantized classes (see the module docstring).

    Deploy engines cannot run such a layer's own forward on integer kernels: the torch engine
    runs it simulated, in float; ONNX QDQ export gives it export forms (:meth:`use_forms`) and
    traces its own forward through them.
    """

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (or the export form's output, see :meth:`use_forms`)."""
        form = self._modules.get("weight_form")
        return form() if form is not None else QuantModule.weight.fget(self)  # type: ignore[attr-defined]

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input quantizer (or the export form, see :meth:`use_forms`)."""
        form = self._modules.get("input_form")
        return form(x) if form is not None else super().quantize_input(x)

    def use_forms(self, weight: nn.Module, inputs: nn.Module) -> None:
        """Compute ``weight`` as ``weight()`` and quantize inputs as ``inputs(x)`` from now on.

        Exporters use this to run the layer's own forward on their forms of the same
        quantization (e.g. ONNX ``DequantizeLinear`` of the integer codes).

        Args:
            weight: a module whose ``forward()`` returns the weight in the float layer's shape.
            inputs: a module quantizing the input (``nn.Identity()`` for none).
        """
        self.weight_form = weight
        self.input_form = inputs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Quantize the first input, then run the layer class's own ``forward``."""
        if args:
            args = (self.quantize_input(args[0]), *args[1:])
        return super().forward(*args, **kwargs)

    @classmethod
    def from_float(
        cls, module: nn.Module, qweight: QuantizedTensor, act: ActQuantizer | None
    ) -> KeepsForward:
        """A copy of ``module`` (its float weight not copied) holding ``qweight``.

        Args:
            module: the float layer (left untouched).
            qweight: its quantized weight (the :mod:`quantbalance.nn.layout` matrix).
            act: optional input quantizer (ignored for embeddings: their inputs are indices).

        Returns:
            The quantized layer, an instance of ``cls`` and of ``type(module)``.
        """
        weight = module._parameters["weight"]
        assert weight is not None
        layout = layout_of(module)
        assert layout is not None
        new = copy.deepcopy(module, {id(weight): None})  # everything but the float weight
        new.__class__ = cls
        del new._parameters["weight"]
        if isinstance(module, nn.Embedding):
            act = None
        new._setup(qweight, act, tuple(weight.shape), layout)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight={self._qscheme.label}"

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # The class is made at run time: pickle (and copy) it by its float class; the state
        # goes through nn.Module.__setstate__ as usual.
        return _new, (self.float_type,), self.__dict__


def _new(float_type: type[nn.Module]) -> KeepsForward:
    cls = keep_forward_type(float_type)
    return cls.__new__(cls)


def keep_forward_type(float_type: type[nn.Module]) -> type[KeepsForward]:
    """The in-place quantized class for ``float_type`` (made once, then reused).

    Args:
        float_type: the float layer's class.

    Returns:
        ``Quantized<Name>``, a subclass of :class:`KeepsForward` and ``float_type``.
    """
    made = _TYPES.get(float_type)
    if made is None:
        name = f"Quantized{float_type.__name__}"
        attrs = {"float_type": float_type, "__module__": __name__, "__qualname__": name}
        made = _TYPES[float_type] = type(name, (KeepsForward, float_type), attrs)
    return made
