"""Round to nearest: the baseline every algorithm must beat."""

from __future__ import annotations

from quantbalance.algorithms.base import QuantContext, register_algorithm
from quantbalance.calibration import make_observer
from quantbalance.formats import quantize_tensor
from quantbalance.nn import weight_matrix


@register_algorithm("rtn")
def rtn(ctx: QuantContext) -> None:
    """Quantize every layer that has no quantized weight yet, by rounding to nearest.

    The range comes from the spec's ``weight_observer`` (``minmax`` or ``mse`` clipping).

    Args:
        ctx: the quantization context (fills ``ctx.qweights``; releases each layer at once).
    """
    for name, spec in ctx.specs.items():
        if spec.weight is None or name in ctx.qweights:
            continue
        w = weight_matrix(ctx.model.get_submodule(name))
        observer = None
        if spec.weight_observer != "minmax" and spec.weight.format_kind.clipping:
            observer = make_observer(spec.weight_observer, spec.weight.granularity)
        ctx.qweights[name] = quantize_tensor(w, spec.weight, observer, name=name)
        del w
        ctx.release(name)
