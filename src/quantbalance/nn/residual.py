"""A tensor addition with quantized inputs and output (a residual ``Add``).

``transform.quantize_residual_adds`` puts one in place of each ``a + b`` of two tensors in a
model's ``forward`` when the Plan sets ``residual_activation``: the simulation then computes
``Q(Q(a) + Q(b))``, which the ONNX export writes as Q/DQ around the ``Add`` (ONNX Runtime runs
it as ``QLinearAdd`` and the convolutions feeding it as ``QLinearConv``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from quantbalance.formats import Scheme
from quantbalance.nn.act import ActQuantizer


class QuantAdd(nn.Module):
    """``out(a(x) + b(y))`` with three activation quantizers (static ranges, calibrated).

    With ``relu``, the ReLU that the model applies to the sum is computed here, before the
    output quantizer: ``out(relu(a(x) + b(y)))``, so the sum's range starts at 0 (as ONNX
    Runtime's ``QLinearAdd`` with the ReLU folded into its output zero point).

    Operands that are not both floating-point tensors (e.g. integer sizes) are added as they
    are: such an addition is not part of the quantized model, then or later.

    Args:
        scheme: the activation scheme of both inputs and of the sum.
        observer: observer name for the static ranges.
        frozen: build already-calibrated quantizers (a checkpoint fills in their ranges).
        relu: apply ReLU to the sum before quantizing it.
    """

    def __init__(
        self, scheme: Scheme, observer: str = "minmax", frozen: bool = False, relu: bool = False
    ) -> None:
        super().__init__()
        self.relu = relu
        mode: Literal["static"] = "static"

        def make() -> ActQuantizer:
            if frozen:
                return ActQuantizer.frozen(scheme, mode, observer)
            return ActQuantizer(scheme, mode, observer)

        self.a, self.b, self.out = make(), make(), make()

    def forward(self, x: Any, y: Any) -> Any:
        """The quantized sum of two float tensors (anything else: ``x + y``)."""
        if not (_is_float(x) and _is_float(y)):
            return x + y
        s = self.a(x) + self.b(y)
        return self.out(torch.relu(s) if self.relu else s)

    def extra_repr(self) -> str:
        return f"{self.out.extra_repr()}, relu={self.relu}"


def _is_float(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()
