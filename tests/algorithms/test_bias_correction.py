"""Bias correction: the quantized model's mean output error goes to about zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.algorithms import adaround as ada_mod
from quantbalance.errors import CalibrationError
from quantbalance.nn import QConv2d


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8, bias=False)).eval()


def data(seed: int, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, generator=g) + 0.5 for _ in range(n)]


PLAN = qb.Plan(layers={"re:.*": qb.LayerSpec(weight=qb.Scheme(3, granularity=qb.PerTensor()))})


def mean_error(q: nn.Module, ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (q(x) - ref(x)).mean(0)  # per output channel


def test_mean_output_error_near_zero() -> None:
    m = mlp()
    calib = data(1)
    rtn = qb.quantize(m, PLAN, progress=False)
    bc = qb.quantize(m, PLAN, calib, algorithm="bias_correction", progress=False)
    assert bc[2].bias is not None  # a missing bias is created
    on_calib = mean_error(bc, m, torch.cat(calib)).abs().max()
    assert on_calib < 1e-4
    held_out = torch.cat(data(7))
    before = mean_error(rtn, m, held_out).abs().mean()
    after = mean_error(bc, m, held_out).abs().mean()
    assert after < 0.3 * before
    assert set(bc.qb_info.algorithm_log["bias_correction"]["max_abs_delta"]) == {"0", "2"}


def test_composes_after_cle_and_adaround() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 1, 6, 6, generator=g) for _ in range(2)]
    plan = qb.preset("w4a8")
    with ada_mod.adaround_options(iters=100):
        q = qb.quantize(m, plan, calib, algorithm="cle+adaround+bias_correction", progress=False)
    assert isinstance(q[0], QConv2d)
    assert {"cle", "adaround", "bias_correction"} <= set(q.qb_info.algorithm_log)


def test_missing_data_names_the_algorithm() -> None:
    with pytest.raises(CalibrationError, match="bias_correction"):
        qb.quantize(mlp(), PLAN, algorithm="bias_correction", progress=False)
