"""The latency model calibrated against whole engines of uniform plans."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.plan import LayerSpec
from quantbalance.search import latency_calibration as lc
from quantbalance.search.cache import Cache
from quantbalance.search.costs import measure_costs
from quantbalance.search.latency import TorchLatencyModel

W8A8 = qb.preset("w8a8").layers["re:.*"]
INT8W = qb.preset("int8-weight").layers["re:.*"]
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
    ).eval()


class Fake:
    """A latency model with fixed standalone and whole-engine times (ms)."""

    def __init__(self, calibrate: Any, whole: float, engines: dict[str, float]) -> None:
        self.name, self.calibrate, self.whole, self.engines = "fake", calibrate, whole, engines
        self.layer = {None: 4.0, W8A8.label: 6.0, INT8W.label: 5.0}  # per layer, standalone
        self.timed: list[list[str]] = []

    def latency_ms(self, name: str, m: nn.Module, s: LayerSpec | None, sh: Any) -> float:
        return self.layer[None if s is None else s.label]

    def model_latency_ms(self, model: nn.Module, batch: Any) -> float:
        return self.whole

    def engines_latency_ms(
        self, model: nn.Module, plans: dict[str, dict[str, LayerSpec]], batch: Any
    ) -> dict[str, float]:
        labels = [next(iter(p.values())).label for p in plans.values()]
        self.timed.append(labels)
        return {"float": self.engines["float"]} | {
            sid: self.engines[lab] for sid, lab in zip(plans, labels, strict=True)
        }


def costs(fake: Fake, cache: Cache, options: dict | None = None) -> Any:
    options = options or {n: {"float": None, "w8a8": W8A8, "int8": INT8W} for n in ("0", "2")}
    return measure_costs(net(), options, X, fake, cache, "m", False)


def test_ratios_make_uniform_plans_exact_and_are_recorded(tmp_path: Path) -> None:
    # float layers alone: 2 x 4 = 8 ms > the whole float model, 6 ms: calibrated.
    fake = Fake("auto", 6.0, {"float": 6.0, W8A8.label: 3.0, INT8W.label: 7.0})
    c = costs(fake, Cache(tmp_path))
    assert c.calibration == pytest.approx({"float": 0.75, W8A8.label: 0.25, INT8W.label: 0.7})
    assert c.rest_latency_ms == 0.0 and c.model_latency_ms == 6.0
    assert c.latency_ms["0"] == pytest.approx({"float": 3.0, "w8a8": 1.5, "int8": 3.5})
    for key, engine in (("float", 6.0), ("w8a8", 3.0), ("int8", 7.0)):
        assert c.plan_latency({"0": key, "2": key}) == pytest.approx(engine)
    assert c.plan_latency({"0": "w8a8", "2": "float"}) == pytest.approx(1.5 + 3.0)
    assert len(fake.timed) == 1 and sorted(fake.timed[0]) == sorted([W8A8.label, INT8W.label])
    again = Fake("auto", 6.0, {"float": 1.0, W8A8.label: 1.0, INT8W.label: 1.0})
    assert costs(again, Cache(tmp_path)).calibration == c.calibration  # whole engines cached
    assert again.timed == []


def test_the_engines_own_float_run_sets_the_units() -> None:
    # The engines' run (more rounds) saw the float model at 12 ms, not the 6 ms timed alone:
    # it becomes the whole float model, and every uniform plan predicts its engine exactly.
    fake = Fake("auto", 6.0, {"float": 12.0, W8A8.label: 6.0, INT8W.label: 14.0})
    c = costs(fake, Cache(None))
    assert c.model_latency_ms == 12.0 and c.rest_latency_ms == pytest.approx(4.0)
    assert c.calibration == pytest.approx({"float": 1.0, W8A8.label: 1 / 6, INT8W.label: 1.0})
    for key, engine in (("float", 12.0), ("w8a8", 6.0), ("int8", 14.0)):
        assert c.plan_latency({"0": key, "2": key}) == pytest.approx(engine)


def test_auto_calibrates_only_where_layers_do_not_add_up(tmp_path: Path) -> None:
    fake = Fake("auto", 20.0, {"float": 20.0, W8A8.label: 1.0, INT8W.label: 1.0})
    c = costs(fake, Cache(tmp_path))  # float layers 8 ms fit inside the 20 ms model
    assert fake.timed == [] and c.calibration == {} and c.rest_latency_ms == 12.0
    assert c.latency_ms["0"] == {"float": 4.0, "w8a8": 6.0, "int8": 5.0}
    forced = Fake(True, 20.0, {"float": 20.0, W8A8.label: 16.0, INT8W.label: 30.0})
    c = costs(forced, Cache(None))
    assert c.calibration == pytest.approx({"float": 1.0, W8A8.label: 1 / 3, INT8W.label: 1.8})
    assert c.plan_latency({"0": "w8a8", "2": "w8a8"}) == pytest.approx(16.0)


def test_specs_with_too_small_a_share_or_no_float_option_are_not_calibrated() -> None:
    fake = Fake(True, 100.0, {"float": 100.0, W8A8.label: 50.0, INT8W.label: 50.0})
    c = costs(fake, Cache(None), {"0": {"float": None, "w8a8": W8A8}, "2": {"float": None}})
    # w8a8 on one layer: 6 ms of a ~100 ms uniform plan (< MIN_SHARE): no engine built
    assert fake.timed == [] and c.calibration == {"float": 1.0}
    assert c.latency_ms["0"]["w8a8"] == 6.0
    fake = Fake(True, 4.0, {"float": 4.0, W8A8.label: 10.0, INT8W.label: 1.0})
    c = costs(fake, Cache(None), {"0": {"w8a8": W8A8}, "2": {"float": None, "int8": INT8W}})
    assert fake.timed == [[W8A8.label]]  # int8's plan would leave layer "0", with no float, out
    assert c.calibration == pytest.approx({"float": 1.0, W8A8.label: 1.0})


def test_ratios_are_clamped_and_failed_engines_leave_the_spec_uncalibrated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = Fake(True, 8.0, {"float": 8.0, W8A8.label: 1000.0, INT8W.label: 0.5})
    c = costs(fake, Cache(None))
    assert c.calibration[W8A8.label] == lc.MAX_RATIO
    assert c.calibration[INT8W.label] == 1 / lc.MAX_RATIO
    assert caplog.text.count("clamped") == 2
    fake.engines_latency_ms = lambda m, plans, b: {"float": 8.0}  # type: ignore[method-assign]
    c = costs(fake, Cache(None))
    assert c.calibration == {"float": 1.0} and c.latency_ms["0"]["w8a8"] == 6.0

    def broken(m: nn.Module, plans: dict, b: Any) -> dict[str, float]:
        raise RuntimeError("inductor said no")

    fake.engines_latency_ms = broken  # type: ignore[method-assign]
    assert costs(fake, Cache(None)).calibration == {"float": 1.0}
    assert "whole engines were not timed (inductor said no)" in caplog.text


def test_the_method_is_in_the_name_so_old_timings_are_not_reused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = TorchLatencyModel(compile="auto", calibrate=False)
    new = TorchLatencyModel(compile="auto", calibrate="auto")
    assert new.name == f"{old.name}/cal-{lc.METHOD}" and new.calibrate == "auto"
    assert TorchLatencyModel(compile=False, calibrate="auto").calibrate is False
    assert TorchLatencyModel(compile=False, calibrate=True).calibrate is True
    key = {"engine": old.name, "machine": "x", "sig": "s"}
    cache = Cache(tmp_path)
    cache.put("latency", key, 1.0)
    assert cache.get("latency", {**key, "engine": new.name}) is None
    for env, mode in (("0", False), ("1", True), ("auto", "auto")):
        monkeypatch.setenv("QB_LATENCY_CALIBRATE", env)
        assert TorchLatencyModel(compile="auto").calibrate == mode
    monkeypatch.setenv("QB_LATENCY_CALIBRATE", "yes")
    with pytest.raises(qb.ConfigError, match="QB_LATENCY_CALIBRATE='yes'; accepted: auto, 1, 0"):
        TorchLatencyModel()
    with pytest.raises(qb.ConfigError, match="calibrate='x'; accepted"):
        TorchLatencyModel(calibrate="x")  # type: ignore[arg-type]


def test_uniform_plans_group_specs_across_layers_and_algorithms() -> None:
    gptq = W8A8.model_copy(update={"algorithm": "gptq"})
    plans = lc.uniform_plans({"a": {"f": None, "x": W8A8}, "b": {"y": gptq, "z": INT8W}})
    assert list(plans) == [lc.spec_id(W8A8), lc.spec_id(INT8W)]
    assert plans[lc.spec_id(W8A8)] == {"a": W8A8, "b": gptq} and len(plans[lc.spec_id(INT8W)]) == 1
    assert lc.float_ratio({"a": 3.0, "b": 1.0}, 2.0) == (0.5, 0.0)
    assert lc.float_ratio({"a": 3.0, "b": 1.0}, 10.0) == (1.0, 6.0)


@pytest.mark.isa
def test_real_engines_are_timed_for_each_uniform_plan() -> None:
    torch.set_num_threads(1)
    model = net()
    plans = {"w8a8": {"0": W8A8, "2": W8A8}, "int8": {"0": INT8W, "2": INT8W}}
    ms = lc.time_uniform_engines(model, plans, torch.randn(4, 3, 8, 8), rounds=2)
    assert set(ms) == {"float", "w8a8", "int8"} and all(v > 0 for v in ms.values())
