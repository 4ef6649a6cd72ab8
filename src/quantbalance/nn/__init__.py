"""Quantized modules and the float -> quantized module registry."""

from quantbalance.nn.act import ActQuantizer
from quantbalance.nn.modules import (
    REGISTRY,
    QConv1d,
    QConv2d,
    QEmbedding,
    QLinear,
    QuantModule,
    quantized_type,
    register,
    weight_matrix,
)

__all__ = [
    "REGISTRY",
    "ActQuantizer",
    "QConv1d",
    "QConv2d",
    "QEmbedding",
    "QLinear",
    "QuantModule",
    "quantized_type",
    "register",
    "weight_matrix",
]
