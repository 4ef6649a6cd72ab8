"""The search names the chosen Plan's layers whose output is NaN/inf (or under the SQNR floor)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trust_net import FixedEngine

import quantbalance as qb
from quantbalance.search import Budget, search
from quantbalance.search.candidates import layer_options


def test_unstorable_candidates_are_dropped_and_garbage_layers_named(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[0].weight.mul_(3e9)  # an fp16 scale of this layer would overflow (stored as inf)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))

    def accuracy(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"acc": float((m(x).argmax(1) == 0).float().mean())}

    fp16 = qb.LayerSpec(weight=qb.Scheme(8, scale_dtype="float16"))
    with pytest.raises(qb.NumericsError, match="scale_dtype='float16'"):  # refused, not NaN
        qb.quantize(net, qb.Plan(layers={"0": fp16}), progress=False)
    # sqnr_floor_db=200: every quantized layer's output is "below the floor", so named
    res = search(net, ([x[:32]], accuracy), Budget(max_drop=1.0), candidates=[fp16],
                 metric="acc", cache_dir=None, presets=["int8-weight"], front_evals=1,
                 max_evals=2, latency_model=FixedEngine(), progress=False,
                 sqnr_floor_db=200.0)  # fmt: skip
    assert "candidate" in caplog.text and "'0'" in caplog.text
    options = layer_options(net, ["0", "2"], [fp16], None)
    assert list(options["0"].values()) == [None]  # only float is left for layer 0
    assert list(options["2"].values()) == [None, fp16]  # layer 2's range fits
    assert res.info["numerics"] and all("SQNR" in p for p in res.info["numerics"].values())
    assert "Numerical problems in the chosen Plan: layer" in res.message
    from quantbalance.report import write_report

    page = write_report(res, tmp_path).read_text()
    assert "Numerical problems in the chosen Plan" in page
