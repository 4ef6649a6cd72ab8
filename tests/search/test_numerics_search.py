"""The search names the chosen Plan's layers whose output is NaN/inf (or under the SQNR floor)."""

from __future__ import annotations

import torch
from torch import nn
from trust_net import FixedEngine

import quantbalance as qb
from quantbalance.search import Budget, search


def test_search_result_and_report_name_garbage_layers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[0].weight.mul_(3e9)  # an fp16 scale of this layer overflows
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))

    def accuracy(m: nn.Module) -> dict[str, float]:  # finite even when the logits are NaN
        with torch.no_grad():
            return {"acc": float((m(x).argmax(1) == 0).float().mean())}

    fp16 = qb.LayerSpec(weight=qb.Scheme(8, scale_dtype="float16"))
    res = search(net, ([x[:32]], accuracy), Budget(max_drop=1.0), candidates=[fp16],
                 metric="acc", cache_dir=None, presets=["int8-weight"], front_evals=1,
                 max_evals=2, latency_model=FixedEngine(), progress=False)  # fmt: skip
    assert res.plan.layers.get("0") == fp16  # the smallest Plan meets a 100 % drop budget
    assert "0" in res.info["numerics"] and "NaN/inf" in res.info["numerics"]["0"]
    assert "Numerical problems in the chosen Plan: layer '0'" in res.message
    from quantbalance.report import write_report

    page = write_report(res, tmp_path).read_text()
    assert "Numerical problems in the chosen Plan" in page
