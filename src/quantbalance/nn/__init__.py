"""Quantized modules, the float -> quantized module registry, and weight layouts."""

from quantbalance.nn.act import ActQuantizer
from quantbalance.nn.dispatch import (
    engine_layer,
    quantized_layers,
    quantized_type,
    unsupported_reason,
)
from quantbalance.nn.keep_forward import KeepsForward, keep_forward_type
from quantbalance.nn.layout import family, from_matrix, layout_of, plain_forward, weight_matrix
from quantbalance.nn.modules import (
    PARTS,
    REGISTRY,
    QConv1d,
    QConv2d,
    QEmbedding,
    QLinear,
    QuantModule,
    register,
)
from quantbalance.nn.residual import QuantAdd

__all__ = [
    "PARTS",
    "REGISTRY",
    "ActQuantizer",
    "KeepsForward",
    "QConv1d",
    "QConv2d",
    "QEmbedding",
    "QLinear",
    "QuantAdd",
    "QuantModule",
    "engine_layer",
    "family",
    "from_matrix",
    "keep_forward_type",
    "layout_of",
    "plain_forward",
    "quantized_layers",
    "quantized_type",
    "register",
    "unsupported_reason",
    "weight_matrix",
]
