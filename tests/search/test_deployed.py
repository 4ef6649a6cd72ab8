"""The chosen Plan deployed and timed here, next to the prediction (demo table and report)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from test_search import make, run

from quantbalance.hardware import detect
from quantbalance.report import write_report
from quantbalance.search import Budget
from quantbalance.search.deployed import deployed_table, isa_text, measure_deployed


def test_deployed_latency_of_the_chosen_plan_and_float(tmp_path: Path) -> None:
    r = run(Budget(max_drop=0.01), tmp_path / "c")
    net, data, _ = make()
    d = measure_deployed(net, r, data, data[0], rounds=2)
    assert d["chosen_ms"] > 0 and d["float_ms"] > 0
    assert d["predicted_chosen_ms"] == r.chosen.latency_ms
    assert d["predicted_float_ms"] == r.float_point.latency_ms
    layers = [k for k in (r.chosen.choice or {}).values() if k != "float"]
    assert sum(d["kernels"].values()) == len(layers)  # one engine module per quantized layer
    assert d["isa"] == isa_text(detect()) and d["int8_target"] == r.plan.hardware
    con = Console(width=200, record=True)
    con.print(deployed_table(d))
    text = con.export_text()
    assert "deployed latency: quantbalance torch engine (torch.compile" in text
    assert f"{d['chosen_ms']:.1f}" in text and f"{d['predicted_chosen_ms']:.1f}" in text
    r.info["deployed"] = d
    page = write_report(r, tmp_path / "report").read_text()
    assert "measured latency (deployed)" in page and f"{d['chosen_ms']:.1f} ms" in page
