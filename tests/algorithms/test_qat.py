"""QAT with learned step sizes: loss goes down, beats PTQ at w4a4, converts to PTQ's modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.errors import CalibrationError, ConfigError
from quantbalance.nn import ActQuantizer, QLinear
from quantbalance.qat import LSQLayer, qat

W4A4 = qb.Plan(
    name="w4a4",
    layers={
        "re:.*": qb.LayerSpec(
            weight=qb.Scheme(4),
            activation=qb.Scheme(4, symmetric=False, granularity=qb.PerTensor()),
        )
    },
)


def task() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A float MLP trained on 4 Gaussian clusters in 16-D, and its training batches."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 1.5
    y = torch.randint(0, 4, (2048,), generator=g)
    x = centers[y] + torch.randn(2048, 16, generator=g)
    data = list(zip(x.split(64), y.split(64), strict=True))
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for xb, yb in data:
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
    return net.eval(), data


def mean_loss(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    with torch.no_grad():
        return sum(float(nn.functional.cross_entropy(model(x), y)) for x, y in data) / len(data)


def test_qat_beats_ptq_w4a4_and_matches_quantize_types() -> None:
    net, data = task()
    calib = [x for x, _ in data[:8]]
    ptq = qb.quantize(net, W4A4, calib, progress=False)
    q = qat(net, W4A4, data, nn.CrossEntropyLoss(), epochs=1, lr=1e-3, progress=False)
    assert mean_loss(q, data) < mean_loss(ptq, data)
    log = q.qb_info.algorithm_log["qat"]
    assert log["steps"] == len(data) and log["loss_last"] < log["loss_first"]
    assert [type(m) for m in q.modules()] == [type(m) for m in ptq.modules()]
    assert isinstance(q[0], QLinear) and isinstance(q[0].input_quantizer, ActQuantizer)
    assert not q[0].input_quantizer.observing and q[0].input_quantizer.observer is None
    assert q.qb_plan.name == "w4a4" and set(q.qb_info.layers) == {"0", "2", "4"}
    assert isinstance(q[2].qweight, qb.QuantizedTensor)


def test_converted_layer_equals_fake_quant_layer() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    spec = W4A4.layers["re:.*"]
    assert spec is not None
    calib = [torch.randn(16, 8)]
    ptq = qb.quantize(nn.Sequential(lin), W4A4, calib, progress=False)[0]
    layer = LSQLayer(lin, spec, ptq)
    with torch.no_grad():
        layer.w_scale.mul_(0.9)  # as if training moved the scales
        layer.a_scale.mul_(1.1)
        x = torch.randn(32, 8)
        torch.testing.assert_close(layer.convert()(x), layer(x), rtol=1e-5, atol=1e-5)


def test_bad_inputs() -> None:
    net, data = task()
    with pytest.raises(ConfigError, match="steps or epochs"):
        qat(net, W4A4, data, nn.CrossEntropyLoss(), progress=False)
    with pytest.raises(CalibrationError, match="pairs"):
        qat(net, W4A4, [x for x, _ in data], nn.CrossEntropyLoss(), steps=2, progress=False)
