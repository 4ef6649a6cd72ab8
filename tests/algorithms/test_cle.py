"""Cross-layer equalization: exact in float, balanced ranges, better per-tensor int4."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.algorithms.cle import (
    ChannelClip,
    cle_scales,
    equalize,
    find_cle_pairs,
    input_channel_ranges,
)


def imbalanced_net(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """conv -> act -> depthwise -> act -> pointwise, first conv's channels 100x apart."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), act(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), act(),
        nn.Conv2d(8, 4, 1),
    )  # fmt: skip
    with torch.no_grad():
        gain = 10 ** torch.linspace(-1, 1, 8)
        net[0].weight.mul_(gain.view(-1, 1, 1, 1))
        net[0].bias.mul_(gain)
    return net.eval()


def spread(x: torch.Tensor) -> float:
    return float(x.detach().max() / x.detach().min())


def test_pairs_found_with_fx_including_depthwise() -> None:
    pairs = find_cle_pairs(imbalanced_net())
    assert [(p.first, p.second) for p in pairs] == [("0", "2"), ("2", "4")]


def test_float_output_unchanged_and_ranges_balanced() -> None:
    net = imbalanced_net()
    x = torch.randn(4, 3, 10, 10)
    ref = net(x)
    before = spread(net[0].weight.reshape(8, -1).abs().amax(1))
    eq = copy.deepcopy(net)
    equalize(eq)
    torch.testing.assert_close(eq(x), ref, rtol=1e-4, atol=1e-5)
    r1 = eq[0].weight.reshape(8, -1).abs().amax(1)
    assert spread(r1) < before / 10
    # After convergence each pair shares its ranges: r1 == r2 per channel.
    torch.testing.assert_close(
        eq[2].weight.reshape(8, -1).abs().amax(1), input_channel_ranges(eq[4]), rtol=1e-3, atol=0
    )


def test_cle_scales_equalize_one_pair() -> None:
    r1, r2 = torch.tensor([8.0, 1.0, 0.0]), torch.tensor([2.0, 4.0, 1.0])
    s = cle_scales(r1, r2)
    torch.testing.assert_close(r1[:2] / s[:2], r2[:2] * s[:2])
    assert float(s[2]) == 1.0


def test_cle_step_lowers_per_tensor_int4_error() -> None:
    net = imbalanced_net()
    plan = qb.Plan(layers={"re:.*": qb.LayerSpec(weight=qb.Scheme(4, granularity=qb.PerTensor()))})
    x = torch.randn(8, 3, 10, 10)
    ref = net(x)
    with torch.no_grad():
        e_rtn = (qb.quantize(net, plan, progress=False)(x) - ref).pow(2).mean()
        q = qb.quantize(net, plan, algorithm="cle", progress=False)
        e_cle = (q(x) - ref).pow(2).mean()
    assert e_cle < 0.5 * e_rtn
    assert q.qb_info.algorithm_log["cle"]["pairs"] == [("0", "2"), ("2", "4")]


def test_relu6_pairs_skipped_by_default_and_exact_with_clip() -> None:
    net = imbalanced_net(nn.ReLU6)
    assert find_cle_pairs(net) == []
    x = torch.randn(4, 3, 10, 10) * 5  # large enough to hit the clip at 6
    ref = net(x)
    equalize(net, relu6="clip")
    assert isinstance(net[1], ChannelClip) and isinstance(net[3], ChannelClip)
    torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-5)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.body(x)
        return self.body(-x)


def test_sequential_fallback_for_untraceable_models() -> None:
    m = Untraceable().eval()
    pairs = find_cle_pairs(m)
    assert [(p.first, p.second) for p in pairs] == [("body.0", "body.2")]
    x = torch.randn(4, 6)
    ref = m(x)
    equalize(m, pairs)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-6)


def test_cle_needs_no_data() -> None:
    q = qb.quantize(imbalanced_net(), "int8-weight", algorithm="cle", progress=False)
    assert q.qb_info.algorithm_log["cle"]["pairs"]


@pytest.mark.parametrize("groups", [1, 2])
def test_input_channel_ranges_grouped(groups: int) -> None:
    conv = nn.Conv2d(4, 6, 1, groups=groups)
    w = conv.weight.detach().reshape(6, -1)
    r = input_channel_ranges(conv)
    if groups == 1:
        torch.testing.assert_close(r, w.abs().amax(0))
    else:  # input channels 0-1 feed outputs 0-2, channels 2-3 feed outputs 3-5
        torch.testing.assert_close(r[:2], w[:3].abs().amax(0))
        torch.testing.assert_close(r[2:], w[3:].abs().amax(0))
