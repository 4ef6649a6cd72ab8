"""qb.quantize's phases one at a time (quantize_steps.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.nn import ActQuantizer
from quantbalance.quantize_steps import (
    calibrate_activations,
    normalise_plan,
    resolve_layers,
    run_steps,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def test_normalise_plan_from_bitwidths_preset_and_algorithm() -> None:
    net = _net()
    by_bits = normalise_plan(net, None, [8, 4], None, None)
    assert [by_bits.layers[n].weight.bits for n in ("0", "2")] == [8, 4]
    default = normalise_plan(net, None, None, "gptq", None)
    assert default.name == "int8-weight"
    assert all(s is None or s.algorithm == "gptq" for s in default.layers.values())
    with pytest.raises(ConfigError, match="either plan or bitwidths"):
        normalise_plan(net, "w8a8", [8, 8], None, None)


def test_resolve_layers_checks_data_and_weights() -> None:
    net = _net()
    plan = normalise_plan(net, "w8a8", None, None, None)
    with pytest.raises(CalibrationError, match="static activation ranges"):
        resolve_layers(net, plan, False, None)
    data = [torch.randn(8, 16)]
    specs, types, batches = resolve_layers(net, plan, False, data)
    assert list(specs) == ["0", "2"] and types == {"0": "Linear", "2": "Linear"}
    assert batches is not None and len(batches) == 1
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(qb.errors.NonFiniteError):
        resolve_layers(net, plan, False, data)
    act8 = qb.Scheme(8, granularity=qb.PerTensor())
    act_only = qb.Plan(layers={"re:.*": qb.LayerSpec(activation=act8)})
    with pytest.raises(UnsupportedError, match="activation-only"):
        resolve_layers(_net(), act_only, False, data)


def test_steps_then_calibration_equal_quantize() -> None:
    net, data = _net(), [torch.randn(8, 16) for _ in range(2)]
    plan = normalise_plan(net, "w8a8", None, None, None)
    model = _net()
    specs, _, batches = resolve_layers(model, plan, False, data)
    ctx, install, installed = run_steps(model, specs, batches, False, None)
    assert set(ctx.qweights) == {"0", "2"}
    for name in specs:
        if name not in installed:
            install(name)
    calibrate_activations(model, batches, False)
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    assert len(quantizers) == 2 and not any(q.observing for q in quantizers)
    x = torch.randn(3, 16)
    assert torch.equal(model(x), qb.quantize(net, plan, data, progress=False)(x))
