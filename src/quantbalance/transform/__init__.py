"""Model transforms: BatchNorm folding and module swapping by name."""

from quantbalance.transform.fold import find_conv_bn_pairs, fold_batchnorm
from quantbalance.transform.swap import quantizable_layers, replace_module, unsupported_layers

__all__ = [
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "quantizable_layers",
    "replace_module",
    "unsupported_layers",
]
