"""SearchConfig: validation, overrides, the record in the result, and search's two call forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_search import FAST, FakeEngine, make
from torch import nn

import quantbalance as qb
from quantbalance.errors import ConfigError
from quantbalance.plan import PRESET_SPECS
from quantbalance.search import Budget, SearchConfig, search


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_evals", "8", "max_evals='8': Input should be a valid integer"),
        ("max_evals", 0, "max_evals=0: Input should be greater than or equal to 1"),
        ("progress", 1, "progress=1: Input should be a valid boolean"),
        ("objective", "speed", "objective='speed': Input should be 'bytes' or 'latency'"),
        ("algorithm", "gptqq", "unknown algorithm 'gptqq' (did you mean 'gptq'?)"),
        ("target", "onnx", "unknown target 'onnx'; accepted: torch, ort, tensorrt"),
        ("measure", 0, "measure=0: give True, False or a number of pairs ≥ 1"),
        ("candidates", "w8a8", "candidates='w8a8': a str; give a list of LayerSpec"),
        ("candidates", nn.Linear(2, 2), "a Linear; give a list of LayerSpec (None = float)"),
        ("executor", "dask", "give 'serial', 'ray' or an executor"),
        ("executor", 3, "give 'serial', 'ray' or an executor"),
        ("latency_model", 3, "latency_model=3: Input should be an instance of LatencyModel"),
        ("hardware", "arm", "hardware='arm': Input should be 'auto', 'vnni' or 'avx2'"),
        ("sqnr_floor_db", float("nan"), "sqnr_floor_db=nan: Input should be a finite number"),
        ("max_eval", 8, "unknown field 'max_eval' (value 8)"),
    ],
)
def test_bad_fields_are_config_errors_naming_the_field_and_the_accepted_ones(
    field: str, value: object, says: str
) -> None:
    with pytest.raises(ConfigError) as e:
        SearchConfig(**{field: value})
    assert says in str(e.value)
    assert "allowed fields: algorithm, cache_dir, candidates, eval_id, executor" in str(e.value)


def test_record_round_trips_a_data_config_and_names_live_objects(tmp_path: Path) -> None:
    spec = PRESET_SPECS["int8-weight"]
    c = SearchConfig(candidates=[spec, None], groups=[["q", "k"]], cache_dir=tmp_path,
                     measure=3, presets=["w8a8"], target="ort")  # fmt: skip
    assert c.is_data and c.candidates == (spec, None) and c.cache_dir == str(tmp_path)
    rec = json.loads(json.dumps(c.record()))
    assert SearchConfig.model_validate(rec) == c
    live = SearchConfig(candidates=lambda n, m: {}, latency_model=FakeEngine(), executor="ray")
    assert not live.is_data
    assert live.record()["candidates"].startswith("<function ")
    assert live.record()["latency_model"] == "<FakeEngine fake>"
    assert live.record()["executor"] == "ray"


def test_merged_overrides_validate_and_keep_what_was_set() -> None:
    base = SearchConfig(max_evals=3, objective="latency")
    assert base.merged({}) is base
    m = base.merged({"max_evals": 5})
    assert (m.max_evals, m.objective) == (5, "latency")
    assert m.model_fields_set == {"max_evals", "objective"}
    with pytest.raises(ConfigError, match="max_evals=-1"):
        base.merged({"max_evals": -1})


def test_config_and_keywords_give_the_same_search(tmp_path: Path) -> None:
    net, data, ev = make()
    budget = Budget(max_drop=0.002)
    args = {**FAST, "metric": "cos", "max_evals": 3, "cache_dir": tmp_path / "a"}
    by_kw = search(net, (data, ev), budget, latency_model=FakeEngine(), **args)
    config = SearchConfig(latency_model=FakeEngine(), **{**args, "cache_dir": tmp_path / "b"})
    by_config = search(net, (data, ev), budget, config=config)
    assert by_config.plan == by_kw.plan and by_config.chosen.drop == by_kw.chosen.drop
    assert by_config.info["config"] == config.record()
    recorded = by_kw.info["config"]
    assert recorded["max_evals"] == 3 and recorded["cache_dir"] == str(tmp_path / "a")
    assert recorded["presets"] == ["int8-weight", "w4-g128"]
    # a keyword laid over a config wins, and is recorded
    over = search(net, (data, ev), budget, config=config, max_evals=1, front_evals=0)
    assert over.info["config"]["max_evals"] == 1
    assert sum(e["purpose"] == "verify" for e in over.log) <= 1
    json.dumps(over.to_dict())


def test_old_positional_options_are_refused_with_the_parameters_named() -> None:
    net, data, ev = make()
    with pytest.raises(qb.ArgumentError, match=r"search\(\): too many positional arguments.*"
                       r"model, source, budget, holdout, sensitivity_source, config"):  # fmt: skip
        search(net, (data, ev), Budget(max_drop=0.01), None, "rtn", 8)  # type: ignore[misc]
