"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

For two layers in a row, ``y = W2 · f(W1 x + b1)``, with ``f`` positively homogeneous per channel
(ReLU, identity, max/avg pooling: ``f(x / s) = f(x) / s`` for ``s > 0``), scaling output channel
``i`` of the first layer by ``1/s_i`` and input channel ``i`` of the second by ``s_i`` leaves
``y`` unchanged. The paper's choice

    ``s_i = sqrt(r1_i / r2_i)``   (``r1_i``: range of W1's output channel ``i``,
                                    ``r2_i``: range of W2's input channel ``i``)

gives both the same range ``sqrt(r1_i · r2_i)``, which balances the channels a per-tensor scale
(or a per-output-channel scale of W2) has to cover. Chains of three or more layers are swept
until the scales settle. Depthwise and grouped convolutions are handled channel by channel.

ReLU6 is not homogeneous (its clip at 6 would move to ``6 / s_i``). ``relu6="skip"`` (default)
leaves such pairs alone; ``relu6="clip"`` replaces the ReLU6 by :class:`ChannelClip`, a ReLU with
a per-channel upper bound ``6 / s_i``, which keeps the float model exact at the cost of a
per-channel clip at inference. Run after BatchNorm folding (``qb.quantize`` does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from quantbalance.algorithms.base import QuantContext, register_algorithm
from quantbalance.transform import replace_module

log = logging.getLogger(__name__)

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
HOMOGENEOUS = (
    nn.ReLU, nn.Identity, nn.Dropout, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d,
)  # fmt: skip
RELU_FUNCS = {torch.relu, F.relu, "relu"}  # call targets of a ReLU in a traced graph


class ChannelClip(nn.Module):
    """``min(relu(x), upper_c)`` with one upper bound per channel (ReLU6 after equalization).

    Args:
        upper: (C,) upper bounds.
        channel_dim: the channel dimension of the input (1 for convolutions, -1 for Linear).
    """

    def __init__(self, upper: torch.Tensor, channel_dim: int = 1) -> None:
        super().__init__()
        self.register_buffer("upper", upper.detach().clone().float())
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip each channel to ``[0, upper_c]``."""
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return torch.minimum(torch.relu(x), self.upper.to(x.dtype).reshape(shape))


@dataclass(frozen=True)
class CLEPair:
    """Two consecutive layers and the per-channel ops between them.

    Attributes:
        first: the layer whose output channels are scaled by ``1/s``.
        second: the layer whose input channels are scaled by ``s``.
        clips: ReLU6/ChannelClip modules in between whose bounds follow ``1/s``.
    """

    first: str
    second: str
    clips: tuple[str, ...] = ()


def find_cle_pairs(model: nn.Module, relu6: Literal["skip", "clip"] = "skip") -> list[CLEPair]:
    """Consecutive layer pairs that can be equalized, from a ``torch.fx`` trace.

    A pair needs the first layer's output to reach only the second layer, through
    single-user per-channel ops (:data:`HOMOGENEOUS`, ``relu`` calls, and ReLU6 when
    ``relu6="clip"``), with matching channel counts. Untraceable models fall back to consecutive
    children of ``nn.Sequential`` containers.

    Args:
        model: the float model (BatchNorm already folded).
        relu6: ``skip`` pairs through ReLU6, or ``clip`` (see the module docstring).

    Returns:
        The pairs, in graph order.
    """
    modules = dict(model.named_modules())
    passing = (*HOMOGENEOUS, ChannelClip) + ((nn.ReLU6,) if relu6 == "clip" else ())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:
        log.info("cle: fx trace failed (%s); using nn.Sequential adjacency", type(e).__name__)
        return _sequential_pairs(model, passing)
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], LAYERS):
            continue
        cur, clips = node.args[0], []
        while isinstance(cur, torch.fx.Node) and len(cur.users) == 1:
            mod = modules.get(cur.target) if cur.op == "call_module" else None
            if isinstance(mod, LAYERS):
                pair = CLEPair(str(cur.target), str(node.target), tuple(clips))
                if calls.count(cur.target) == 1 and calls.count(node.target) == 1:
                    pairs.append(pair)
                break
            if isinstance(mod, passing) or (cur.op != "call_module" and cur.target in RELU_FUNCS):
                if isinstance(mod, nn.ReLU6 | ChannelClip):
                    clips.append(str(cur.target))
                cur = cur.args[0]
                continue
            break
    return [p for p in pairs if _channels_match(modules[p.first], modules[p.second])]


def _sequential_pairs(model: nn.Module, passing: tuple[type, ...]) -> list[CLEPair]:
    pairs = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        prefix = f"{name}." if name else ""
        first, clips = None, []
        for child, mod in seq.named_children():
            if isinstance(mod, LAYERS):
                if first is not None and _channels_match(seq.get_submodule(first), mod):
                    pairs.append(CLEPair(prefix + first, prefix + child, tuple(clips)))
                first, clips = child, []
            elif isinstance(mod, passing):
                clips += [prefix + child] if isinstance(mod, nn.ReLU6 | ChannelClip) else []
            else:
                first = None
    return pairs


def _channels_match(a: nn.Module, b: nn.Module) -> bool:
    out = a.out_features if isinstance(a, nn.Linear) else a.out_channels
    inp = b.in_features if isinstance(b, nn.Linear) else b.in_channels
    return out == inp and isinstance(a, nn.Linear) == isinstance(b, nn.Linear)


def _groups(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Linear) else int(layer.groups)


def input_channel_ranges(layer: nn.Module) -> torch.Tensor:
    """``max |W|`` over everything that reads each input channel of a layer.

    Args:
        layer: a Linear or (grouped / depthwise) convolution.

    Returns:
        (in_channels,) ranges.
    """
    w = layer.weight.detach()
    g, out, per = _groups(layer), w.shape[0], w.shape[1]
    view = w.reshape(g, out // g, per, -1).transpose(1, 2)  # (g, in/g, out/g, k)
    return view.abs().reshape(g * per, -1).amax(1)


def cle_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """The paper's equalizing scales ``s_i = sqrt(r1_i / r2_i)`` (1 where a range is zero).

    Args:
        r1: (C,) output-channel ranges of the first layer.
        r2: (C,) input-channel ranges of the second layer.

    Returns:
        (C,) positive scales.

    Example:
        >>> cle_scales(torch.tensor([4.0, 1.0]), torch.tensor([1.0, 0.0])).tolist()
        [2.0, 1.0]
    """
    ok = (r1 > 0) & (r2 > 0)
    return torch.where(ok, torch.sqrt(r1 / r2.clamp(min=1e-30)), torch.ones_like(r1))


@torch.no_grad()
def apply_cle(model: nn.Module, pair: CLEPair, s: torch.Tensor) -> None:
    """Scale ``pair.first``'s output channels by ``1/s`` and ``pair.second``'s inputs by ``s``.

    Args:
        model: the model (modified in place; float output unchanged).
        pair: the pair.
        s: (C,) positive scales.
    """
    first, second = model.get_submodule(pair.first), model.get_submodule(pair.second)
    w1 = first.weight
    w1.div_(s.reshape(-1, *([1] * (w1.dim() - 1))))
    if first.bias is not None:
        first.bias.div_(s)
    w2 = second.weight
    g, out, per = _groups(second), w2.shape[0], w2.shape[1]
    factor = s.reshape(g, 1, per).expand(g, out // g, per).reshape(out, per)
    w2.mul_(factor.reshape(out, per, *([1] * (w2.dim() - 2))))
    for name in pair.clips:
        clip = model.get_submodule(name)
        if isinstance(clip, nn.ReLU6):
            clip = ChannelClip(torch.full_like(s, 6.0), 1 if w1.dim() > 2 else -1)
            replace_module(model, name, clip)
        clip.upper.div_(s)


def equalize(
    model: nn.Module,
    pairs: list[CLEPair] | None = None,
    max_sweeps: int = 20,
    tol: float = 1e-4,
    relu6: Literal["skip", "clip"] = "skip",
) -> list[CLEPair]:
    """Cross-layer equalization of every pair, in place, swept until the scales settle.

    Args:
        model: the float model (BatchNorm folded first).
        pairs: the pairs (default: :func:`find_cle_pairs`).
        max_sweeps: maximum passes over the pairs.
        tol: stop when every ``|log s|`` of a sweep is below this.
        relu6: how pairs through ReLU6 are handled (``skip`` or exact ``clip``).

    Returns:
        The pairs equalized.
    """
    pairs = find_cle_pairs(model, relu6) if pairs is None else pairs
    for sweep in range(max_sweeps):
        worst = 0.0
        for p in pairs:
            first = model.get_submodule(p.first)
            r1 = first.weight.detach().reshape(first.weight.shape[0], -1).abs().amax(1)
            s = cle_scales(r1, input_channel_ranges(model.get_submodule(p.second)))
            apply_cle(model, p, s)
            worst = max(worst, float(s.log().abs().max()))
        log.debug("cle sweep %d: max |log s| = %.2e", sweep, worst)
        if worst < tol:
            break
    for p in pairs:
        log.info("cle: equalized %s -> %s", p.first, p.second)
    return pairs


@register_algorithm("cle")
def cle(ctx: QuantContext) -> None:
    """Plan step ``cle``: equalize the pairs where either layer's spec names ``cle``.

    Args:
        ctx: the quantization context (its float model is modified in place).
    """
    names = set(ctx.layers_for("cle"))
    pairs = [p for p in find_cle_pairs(ctx.model) if {p.first, p.second} & names]
    if not pairs:
        log.warning("cle: no equalizable consecutive layers among %d layers", len(names))
    equalize(ctx.model, pairs)
    ctx.log["cle"] = {"pairs": [(p.first, p.second) for p in pairs]}
