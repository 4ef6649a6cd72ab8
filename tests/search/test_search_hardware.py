"""qb.search(hardware=...): Plans quantized, costed and evaluated for the chosen int8 target."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_search import make, run

import quantbalance as qb
from quantbalance.errors import ConfigError, QuantBalanceError
from quantbalance.hardware import detect
from quantbalance.lowering import plan_target, targeting
from quantbalance.search import Budget

HERE = detect().int8_target
OTHER = "avx2" if HERE == "vnni" else "vnni"


@pytest.mark.parametrize("hardware", ["auto", OTHER])
def test_search_quantizes_costs_and_evaluates_for_the_target(hardware: str, tmp_path: Path) -> None:
    target = HERE if hardware == "auto" else OTHER
    r = run(Budget(max_drop=0.01), tmp_path, hardware=hardware, presets=["w8a8"])
    assert r.plan.hardware == target
    # bytes: on avx2, layers with int8 inputs store 7-bit codes
    bits = 7 if target == "avx2" else 8
    assert r.costs.nbytes["mid"]["w8a8"] == 64 * 128 * bits // 8 + 128 * 4 + 8
    # the preset was evaluated as qb.quantize(hardware=target) computes it
    net, data, ev = make()
    with torch.no_grad():
        q = qb.quantize(net, "w8a8", calib_data=data, hardware=target, progress=False)
    assert r.presets[0].metrics["cos"] == pytest.approx(ev(q)["cos"], abs=1e-6)
    assert plan_target() == HERE  # the target does not leak out of the search


def test_hardware_is_validated_and_not_sent_to_other_processes(tmp_path: Path) -> None:
    with pytest.raises(QuantBalanceError, match="hardware"):
        run(Budget(max_drop=0.01), tmp_path, hardware="arm")
    with pytest.raises(ConfigError, match="cannot be sent to executor='ray'"):
        run(Budget(max_drop=0.01), tmp_path, hardware=OTHER, executor="ray")
    with targeting(OTHER) as t:
        assert t == plan_target() == OTHER
        with targeting("auto"):
            assert plan_target() == OTHER  # auto keeps the target in force
    assert plan_target() == HERE
