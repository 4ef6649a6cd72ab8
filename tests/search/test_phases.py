"""The search's phases one at a time (search/setup.py, search/phases.py) on the tiny test net."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_search import FakeEngine, make

import quantbalance as qb
from quantbalance.errors import ConfigError
from quantbalance.search import Budget
from quantbalance.search.phases import (
    build_problem,
    costs_phase,
    layer_groups,
    sensitivity_phase,
)
from quantbalance.search.setup import SearchSetup


def _setup(tmp_path: Path, **kw: object) -> tuple[SearchSetup, torch.nn.Module]:
    net, data, ev = make()
    args = {
        "presets": ["int8-weight"], "metric": "cos", "higher_is_better": None, "eval_id": None,
        "cache_dir": tmp_path, "executor": None, "target": None, "objective": "bytes", **kw,
    }  # fmt: skip
    setup = SearchSetup.build(net, (data, ev), Budget(max_drop=0.01), None, "rtn", None, **args)
    return setup, net


def test_setup_fills_the_metric_and_measures_the_float_reference(tmp_path: Path) -> None:
    setup, net = _setup(tmp_path)
    _, _, ev = make()
    assert setup.budget.metric == "cos"
    assert setup.names == ["q", "k", "mid", "out"]
    assert all("float" in opts and setup.options[n]["float"] is None for n, opts in
               setup.options.items())  # fmt: skip
    assert setup.reference["cos"] == pytest.approx(ev(net)["cos"], abs=1e-6)
    assert list(setup.preset_plans) == ["int8-weight"] and setup.holdout is None


def test_setup_refuses_a_model_without_quantizable_layers(tmp_path: Path) -> None:
    _, data, ev = make()
    with pytest.raises(ConfigError, match="no quantizable layers"):
        SearchSetup.build(
            torch.nn.Sequential(torch.nn.ReLU()), (data, ev), Budget(max_drop=0.01), None,
            "rtn", None, presets=[], metric="cos", higher_is_better=None, eval_id=None,
            cache_dir=None, executor=None, target=None, objective="bytes",
        )  # fmt: skip


def test_problem_holds_exact_bytes_and_sensitivities_per_candidate(tmp_path: Path) -> None:
    setup, net = _setup(tmp_path)
    sens, sens_ev = sensitivity_phase(setup, net, None, True, False)
    assert sens_ev is setup.evaluator
    costs, preset_choice = costs_phase(setup, FakeEngine(), False)
    assert set(preset_choice) == {"int8-weight"}
    problem = build_problem(setup, sens, costs, [["q", "k"]])
    assert problem.layers == setup.names and problem.groups == [[0, 1]]
    for i, name in enumerate(problem.layers):
        keys = problem.keys[i]
        assert keys == list(setup.options[name])
        float_bytes = problem.nbytes[i][keys.index("float")]
        weight = net.get_submodule(name).weight
        assert float_bytes == weight.numel() * weight.element_size()
        int8 = qb.quantize_tensor(weight.detach(), setup.options[name]["int8-weight"].weight)
        assert problem.nbytes[i][keys.index("int8-weight")] == int8.nbytes
        assert problem.drop[i][keys.index("float")] == 0.0


def test_layer_groups_are_indices_and_unknown_names_are_refused() -> None:
    assert layer_groups(["a", "b", "c"], [["a", "c"], ["b"]]) == [[0, 2], [1]]
    assert layer_groups(["a"], None) == []
    with pytest.raises(ConfigError, match=r"\['z'\]"):
        layer_groups(["a", "b"], [["a", "z"]])
