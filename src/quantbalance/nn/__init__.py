"""Quantized modules, the float -> quantized module registry, and weight layouts."""

from quantbalance.nn.act import ActQuantizer
from quantbalance.nn.dispatch import quantized_layers, quantized_type, unsupported_reason
from quantbalance.nn.keep_forward import KeepsForward, keep_forward_type
from quantbalance.nn.layout import family, layout_of, weight_matrix
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

__all__ = [
    "PARTS",
    "REGISTRY",
    "ActQuantizer",
    "KeepsForward",
    "QConv1d",
    "QConv2d",
    "QEmbedding",
    "QLinear",
    "QuantModule",
    "family",
    "keep_forward_type",
    "layout_of",
    "quantized_layers",
    "quantized_type",
    "register",
    "unsupported_reason",
    "weight_matrix",
]
