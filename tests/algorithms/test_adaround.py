"""AdaRound: same scale as round to nearest, learned codes, lower layer-output error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantbalance as qb
from quantbalance.algorithms.adaround import AdaRoundConfig, adaround, rectified_sigmoid
from quantbalance.errors import CalibrationError
from quantbalance.nn import QConv2d, QLinear


def layer_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 48, generator=g) * 0.1
    # Correlated input channels: rounding errors can cancel, which nearest rounding ignores.
    x = torch.randn(1024, 6, generator=g) @ torch.randn(6, 48, generator=g)
    x = x + 0.1 * torch.randn(1024, 48, generator=g)
    return w, x, F.linear(x, w)


def test_rectified_sigmoid_range() -> None:
    h = rectified_sigmoid(torch.tensor([-100.0, 0.0, 100.0]))
    assert h.tolist() == [0.0, 0.5, 1.0]


def test_layer_reconstruction_beats_round_to_nearest() -> None:
    w, x, y = layer_data()
    scheme = qb.Scheme(4)
    rtn = qb.quantize_tensor(w, scheme)
    cfg = AdaRoundConfig(iters=400, batch=128)
    ada = adaround(w, scheme, lambda xb, wq: F.linear(xb, wq), x, y, cfg)
    err_rtn = (F.linear(x, rtn.dequantize()) - y).pow(2).mean()
    err_ada = (F.linear(x, ada.dequantize()) - y).pow(2).mean()
    assert err_ada < 0.5 * err_rtn
    # Same layout and scale; each code is rounded down or up, never further.
    assert ada.scheme == rtn.scheme and torch.equal(ada.scale, rtn.scale)
    diff = ada.codes().int() - rtn.codes().int()
    assert diff.abs().max() <= 1 and (diff != 0).any()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 36, 4),
    ).eval()  # fmt: skip


def cnn_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 6, 6, generator=g) for _ in range(2)]


def test_adaround_step_quantizes_every_layer() -> None:
    m = tiny_cnn()
    x = torch.cat(cnn_batches())
    spec = qb.LayerSpec(weight=qb.Scheme(3), algorithm_args={"adaround": {"iters": 200}})
    plan = qb.Plan(layers={"re:.*": spec})
    q = qb.quantize(m, plan, cnn_batches(), algorithm="adaround", progress=False)
    assert isinstance(q[0], QConv2d) and isinstance(q[6], QLinear)
    assert set(q.qb_info.algorithm_log["adaround"]["output_mse"]) == {"0", "3", "6"}
    with torch.no_grad():
        ref = m(x)
        e_ada = (q(x) - ref).pow(2).mean()
        e_rtn = (qb.quantize(m, plan, progress=False)(x) - ref).pow(2).mean()
    assert e_ada < e_rtn


def test_missing_data_names_the_algorithm() -> None:
    with pytest.raises(CalibrationError, match="adaround"):
        qb.quantize(tiny_cnn(), "int8-weight", algorithm="adaround", progress=False)
