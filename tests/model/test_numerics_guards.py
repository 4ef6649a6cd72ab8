"""Numerical guards: NaN/inf outputs and outputs drowned in noise are named, never silent."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.evaluate.guards import check_numerics, layer_numerics, problems

X = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))


def huge_first_layer() -> nn.Module:
    """Weights so large that an fp16 scale would overflow (quantization refuses it)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[0].weight.mul_(3e9)
    return net


FP16_SCALES = qb.Plan(layers={"0": qb.LayerSpec(weight=qb.Scheme(8, scale_dtype="float16")),
                              "2": qb.preset("int8-weight").layers["re:.*"]})  # fmt: skip


def garbage_first_layer() -> tuple[nn.Module, nn.Module]:
    """A float model and a quantized one whose first layer's scales are inf (as a corrupted or
    hand-edited quantized model would be): its output is NaN/inf."""
    net = huge_first_layer()
    q = qb.quantize(net, "int8-weight", [X], progress=False)
    qt = q[0].qweight
    q[0].qweight = dataclasses.replace(qt, scale=torch.full_like(qt.scale, float("inf")))
    return net, q


def two_bit_first_layer() -> tuple[nn.Module, qb.Plan]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16, bias=False), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[0].weight[0, 0] = 1000.0  # one outlier sets the per-tensor 2-bit step: the rest is 0
    spec = qb.LayerSpec(weight=qb.Scheme(2, granularity=qb.PerTensor()))
    return net, qb.Plan(layers={"0": spec})


def test_nan_and_inf_outputs_are_named() -> None:
    net, q = garbage_first_layer()
    with torch.no_grad():
        assert torch.isfinite(net(X)).all()
    got = layer_numerics(net, q, [X])
    assert got["0"].nonfinite == got["0"].total == 32 * 16
    bad = problems(got)
    assert "0" in bad and "NaN/inf" in bad["0"]
    assert json.dumps({n: r.to_dict() for n, r in got.items()})


def test_the_sqnr_floor_is_a_parameter() -> None:
    net, plan = two_bit_first_layer()
    x = X.clone()
    x[:, 0] = 0  # the outlier's input: the layer's whole output is the quantization error
    q = qb.quantize(net, plan, [x], progress=False)
    got = layer_numerics(net, q, [x], floor_db=10.0)
    assert got["0"].sqnr_db < 10.0
    assert problems(got)["0"] == f"output SQNR {got['0'].sqnr_db:.1f} dB is below the 10 dB floor"
    fine = qb.quantize(net, "int8-weight", [x], progress=False)
    assert problems(layer_numerics(net, fine, [x], floor_db=10.0)) == {}
    assert layer_numerics(net, fine, [x])["0"].sqnr_db > 10  # int8 keeps the rest: 13.7 dB


def test_compare_reports_the_layers() -> None:
    net, q = garbage_first_layer()

    def ev(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"argmax_mean": float(m(X).argmax(1).float().mean())}

    c = qb.compare(net, q, ev, batches=[X])
    assert set(c.numeric_problems) >= {"0"}
    assert "NaN/inf" in c.numeric_problems["0"]
    json.dumps(c.to_dict())
    ok = qb.compare(net, qb.quantize(net, "int8-weight", [X], progress=False), ev, [X])
    assert ok.numeric_problems == {}


def test_quantize_check_numerics_raises_naming_the_layer() -> None:
    net = huge_first_layer()  # an fp16 scale would be inf: refused before any output exists
    with pytest.raises(qb.NumericsError, match="scale_dtype='float16'"):
        qb.quantize(net, FP16_SCALES, [X], progress=False)
    q = qb.quantize(net, "int8-weight", [X], progress=False, check_numerics=True)
    assert problems(layer_numerics(net, q, [X])) == {}
    two, plan = two_bit_first_layer()
    x = X.clone()
    x[:, 0] = 0
    with pytest.raises(qb.NumericsError, match="below the 10 dB floor"):
        qb.quantize(two, plan, [x], progress=False, check_numerics=10.0)
    with pytest.raises(qb.ConfigError, match="check_numerics"):
        qb.quantize(net, "int8-weight", progress=False, check_numerics=True)
    with pytest.raises(qb.NumericsError, match=r"(?s)0: output has 512 NaN/inf"):
        check_numerics(*garbage_first_layer(), [X])
