"""qb.search end to end on a tiny model with a synthetic eval function and a fake engine."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.errors import ConfigError
from quantbalance.plan import LayerSpec
from quantbalance.search import Budget, SearchResult, search
from quantbalance.search.latency import kernel_kind
from quantbalance.search.pareto import dominates


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny models on a shared machine: one thread avoids OpenMP spinning against other jobs
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAST = {"presets": ["int8-weight", "w4-g128"], "front_evals": 1, "progress": False}


class TinyNet(nn.Module):
    """Four Linear layers; ``q``/``k`` mimic layers that must share a spec."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q = nn.Linear(64, 64)
        self.k = nn.Linear(64, 64)
        self.mid = nn.Linear(64, 128)
        self.out = nn.Linear(128, 16)
        with torch.no_grad():  # an outlier column makes ``out`` sensitive to 4 bits
            self.out.weight[:, 3] *= 40

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.q(x)) + torch.relu(self.k(x))
        return self.out(torch.relu(self.mid(h)))


class FakeEngine:
    """Deterministic latency: proportional to weight size, cheaper for integer kernels."""

    name = "fake"
    factor: ClassVar[dict[str, float]] = {
        "float": 1.0,
        "dequant": 1.0,
        "embedding": 1.0,
        "int8-weight-pack": 0.7,
        "int4-pack": 0.6,
        "int8-onednn": 0.3,
        "int8-onednn-conv": 0.3,
        "int8-onednn-dynamic": 0.35,
        "int8-onednn-token": 0.35,
    }

    def latency_ms(
        self,
        layer_name: str,
        module: nn.Module,
        spec: LayerSpec | None,
        example_input_shape: tuple[int, ...],
    ) -> float:
        return module.weight.numel() * 1e-3 * self.factor[kernel_kind(module, spec)]

    def model_latency_ms(self, model: nn.Module, example_inputs: object) -> float:
        return sum(m.weight.numel() * 1e-3 for m in model.modules() if isinstance(m, nn.Linear))


def make() -> tuple[TinyNet, list[torch.Tensor], object]:
    net = TinyNet().eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(32, 64, generator=g) for _ in range(3)]
    with torch.no_grad():
        ref = [net(x) for x in data]

    def fidelity(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            cos = [
                nn.functional.cosine_similarity(model(x), r, dim=1).mean()
                for x, r in zip(data, ref, strict=True)
            ]
        return {"cos": float(sum(cos) / len(cos))}

    return net, data, fidelity


def run(budget: Budget, tmp_path: Path, **kw: object) -> SearchResult:
    net, data, ev = make()
    args = {**FAST, "cache_dir": tmp_path, "latency_model": FakeEngine(), "metric": "cos", **kw}
    return search(net, (data, ev), budget, **args)  # type: ignore[arg-type]


def test_budget_validation() -> None:
    assert Budget(max_bytes=1e6).kind == "bytes"
    assert Budget(max_latency_ms=3).limit == 3
    with pytest.raises(ConfigError, match="exactly one"):
        Budget()
    with pytest.raises(ConfigError, match="exactly one"):
        Budget(max_drop=0.01, max_bytes=100)
    with pytest.raises(ConfigError, match="max_drop"):
        Budget(max_drop=-1)
    with pytest.raises(ConfigError, match="unknown field"):
        Budget(max_dorp=0.1)


def test_drop_budget_end_to_end(tmp_path: Path) -> None:
    r = run(Budget(max_drop=0.002), tmp_path, groups=[["q", "k"]])
    assert r.met_budget, r.message
    assert r.chosen.drop is not None and r.chosen.drop <= 0.002
    assert r.chosen.nbytes < r.float_point.nbytes
    spec = r.plan.layers
    assert spec["q"] == spec["k"]  # grouped
    # the predicted bytes of a searched Plan are exact
    net, data, _ = make()
    q = qb.quantize(net, r.plan, data, progress=False)
    assert qb.model_nbytes(q) == r.chosen.nbytes
    assert r.costs.plan_bytes(r.chosen.choice) == r.chosen.nbytes
    assert 1 <= sum(e["purpose"] == "verify" for e in r.log) <= 8
    assert any(p.measured for p in r.front) and any(not p.measured for p in r.front)
    assert {p.name for p in r.presets} == {"int8-weight", "w4-g128"}
    for axis in ("bytes", "latency"):  # no preset strictly dominates a point of the front
        on = [p for p in r.front if p.on_front[axis]]
        assert on and not any(dominates(q, p, axis) for q in r.presets for p in on)
    json.dumps(r.to_dict())


def test_sensitive_layer_is_protected(tmp_path: Path) -> None:
    r = run(Budget(max_drop=0.002), tmp_path)
    ranking = r.sensitivity.ranking("w4-g128")
    assert ranking[0] == "out"
    assert r.chosen.choice is not None and r.chosen.choice["out"] != "w4-g128"


def test_bytes_and_latency_budgets(tmp_path: Path) -> None:
    ref = run(Budget(max_drop=0.5), tmp_path)
    small = min(p.nbytes for p in ref.front)
    limit = (small + ref.float_point.nbytes) / 2
    r = run(Budget(max_bytes=limit), tmp_path)
    assert r.met_budget and r.chosen.nbytes <= limit
    lat = run(Budget(max_latency_ms=0.7 * ref.float_point.latency_ms), tmp_path)
    assert lat.met_budget and lat.chosen.latency_ms <= 0.7 * ref.float_point.latency_ms
    assert lat.costs.engine == "fake"
    fast = run(Budget(max_drop=0.002), tmp_path, objective="latency")
    small = run(Budget(max_drop=0.002), tmp_path)
    assert fast.met_budget and small.met_budget
    assert fast.chosen.latency_ms <= small.chosen.latency_ms
    assert small.chosen.nbytes <= fast.chosen.nbytes


def test_impossible_budget_returns_closest_plan(tmp_path: Path) -> None:
    r = run(Budget(max_bytes=100), tmp_path)
    assert not r.met_budget
    assert "no Plan meets" in r.message and "closest" in r.message
    assert r.plan.layers and r.chosen.measured
    assert r.chosen.nbytes == min(p.nbytes for p in r.front if p.measured)
    assert r.front


def test_holdout_judges_the_budget(tmp_path: Path) -> None:
    _, _, ev = make()
    calls = []

    def held_out(model: nn.Module) -> dict[str, float]:
        calls.append(1)
        return ev(model)

    r = run(Budget(max_drop=0.002), tmp_path, holdout=held_out)
    assert calls and r.chosen.holdout_metrics is not None
    assert r.holdout_reference is not None
    assert "held-out" in r.message


@pytest.mark.parametrize(
    ("bad", "match"), [(math.nan, "not a finite number"), ("high", "not a number")]
)
def test_bad_eval_is_a_clear_error(tmp_path: Path, bad: object, match: str) -> None:
    net, data, _ = make()

    def broken(model: nn.Module) -> dict[str, object]:
        return {"cos": bad}

    with pytest.raises(ConfigError, match=match) as e:
        search(net, (data, broken), Budget(max_drop=0.01), metric="cos", cache_dir=tmp_path, **FAST)
    assert "broken" in str(e.value) and "'cos'" in str(e.value)


def test_missing_metric_and_bad_groups(tmp_path: Path) -> None:
    net, data, ev = make()
    with pytest.raises(ConfigError, match="metric"):
        search(net, (data, ev), Budget(max_drop=0.01), cache_dir=tmp_path, **FAST)
    with pytest.raises(ConfigError, match="not quantizable"):
        run(Budget(max_drop=0.01), tmp_path, groups=[["q", "nope"]])
    with pytest.raises(ConfigError, match="unknown preset"):
        run(Budget(max_drop=0.01), tmp_path, presets=["w2-magic"])
    with pytest.raises(ConfigError, match="max_evals"):
        run(Budget(max_drop=0.01), tmp_path, max_evals=0)


def test_presets_are_judged_on_both_splits_with_one_quantization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantbalance.search.evaluator import PlanEvaluator

    _, _, ev = make()
    quantized: list[str] = []
    original = PlanEvaluator._quantize

    def counting(self: PlanEvaluator, plan: qb.Plan) -> nn.Module:
        quantized.append(plan.name)
        return original(self, plan)

    monkeypatch.setattr(PlanEvaluator, "_quantize", counting)
    r = run(Budget(max_drop=0.01), tmp_path, holdout=ev)
    for p in r.presets:
        assert quantized.count(p.name) == 1  # search and held-out split from one quantized copy
        assert p.holdout_metrics is not None and p.holdout_drop == pytest.approx(p.drop)
    held = [e for e in r.log if e["split"] == "holdout" and e["purpose"] == "holdout"]
    assert {p.name for p in r.presets} <= {e["plan"] for e in held}


class TokenEngine(FakeEngine):
    """FakeEngine where the per-token dynamic int8 kernel is the fastest."""

    factor: ClassVar[dict[str, float]] = {**FakeEngine.factor, "int8-onednn-token": 0.2}


def test_latency_objective_adds_per_token_dynamic_candidates(tmp_path: Path) -> None:
    r = run(Budget(max_drop=0.01), tmp_path, objective="latency", latency_model=TokenEngine())
    for layer in ("q", "k", "mid", "out"):
        assert "w8a8-dynamic" in r.sensitivity.entries[layer]
        assert r.costs.latency_ms[layer]["w8a8-dynamic"] < r.costs.latency_ms[layer]["w8a8"]
    assert r.met_budget
    assert "w8a8-dynamic" in set((r.chosen.choice or {}).values())
    b = run(Budget(max_drop=0.01), tmp_path / "b")
    assert "w8a8-dynamic" not in b.sensitivity.entries["q"]  # bytes: same size as int8-weight
