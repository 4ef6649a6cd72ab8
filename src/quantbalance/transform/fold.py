"""Fold BatchNorm into the preceding convolution (before quantization).

``y = γ · (conv(x) - μ) / sqrt(σ² + ε) + β``  becomes a convolution with
``W' = W · γ / sqrt(σ² + ε)`` (per output channel) and ``b' = (b - μ) · γ / sqrt(σ² + ε) + β``.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import nn

from quantbalance.transform.swap import replace_module

log = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Convolution -> BatchNorm pairs where the BN is the conv's only consumer.

    Uses a ``torch.fx`` trace; if the model cannot be traced, falls back to consecutive
    children of ``nn.Sequential`` containers.

    Args:
        model: the model.

    Returns:
        List of ``(conv_name, bn_name)``.
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:
        log.debug("fx trace failed (%s); folding consecutive Sequential children only", e)
        return _sequential_pairs(model)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BNS):
            continue
        src = node.args[0]
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), _CONVS)
            and len(src.users) == 1
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        kids = list(mod.named_children())
        for (a, ma), (b, mb) in itertools.pairwise(kids):
            if isinstance(ma, _CONVS) and isinstance(mb, _BNS):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every eligible BatchNorm into its convolution, in place (BN becomes Identity).

    Args:
        model: a model in eval mode (BN running statistics are used).

    Returns:
        The folded ``(conv_name, bn_name)`` pairs.
    """
    pairs = find_conv_bn_pairs(model)
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        assert isinstance(conv, _CONVS) and isinstance(bn, _BNS)
        assert bn.running_mean is not None and bn.running_var is not None
        inv = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv)
        factor = gamma * inv
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.mul_(factor.reshape(shape))
        b = conv.bias if conv.bias is not None else torch.zeros_like(inv)
        new_bias = (b - bn.running_mean) * factor + beta
        conv.bias = nn.Parameter(new_bias)
        replace_module(model, bn_name, nn.Identity())
        log.info("folded %s into %s", bn_name, conv_name)
    return pairs
