"""Model transforms: BatchNorm folding, attention as linear layers, quantized residual additions,
module swapping by name."""

from quantbalance.transform.attention import LinearMultiheadAttention, split_attention
from quantbalance.transform.coverage import Coverage, coverage, weight_params
from quantbalance.transform.fold import find_conv_bn_pairs, fold_batchnorm
from quantbalance.transform.residual import quantize_residual_adds
from quantbalance.transform.swap import quantizable_layers, replace_module, unsupported_layers

__all__ = [
    "Coverage",
    "LinearMultiheadAttention",
    "coverage",
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "quantizable_layers",
    "quantize_residual_adds",
    "replace_module",
    "split_attention",
    "unsupported_layers",
    "weight_params",
]
