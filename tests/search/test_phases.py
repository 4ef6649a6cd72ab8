"""The search's phases one at a time (search/setup.py, search/phases.py) on the tiny test net."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_search import FakeEngine, make

import quantbalance as qb
from quantbalance.errors import ConfigError
from quantbalance.search import Budget, SearchConfig
from quantbalance.search.phases import (
    assemble_result,
    build_problem,
    costs_phase,
    front_phase,
    holdout_phase,
    layer_groups,
    sensitivity_phase,
    verify_phase,
)
from quantbalance.search.setup import SearchSetup


def _setup(
    tmp_path: Path, budget: Budget | None = None, holdout: object = None, **kw: object
) -> tuple[SearchSetup, torch.nn.Module]:
    net, data, ev = make()
    config = SearchConfig(presets=["int8-weight"], metric="cos", cache_dir=tmp_path,
                          latency_model=FakeEngine(), progress=False, **kw)  # fmt: skip
    setup = SearchSetup.build(net, (data, ev), budget or Budget(max_drop=0.01), holdout, config)
    return setup, net


def _through_verify(tmp_path: Path, **kw: object) -> tuple:  # type: ignore[type-arg]
    setup, net = _setup(tmp_path, **kw)
    sens, _ = sensitivity_phase(setup, net, None)
    costs, preset_choice = costs_phase(setup)
    problem = build_problem(setup, sens, costs)
    return setup, net, problem, costs, preset_choice, verify_phase(setup, problem, costs)


def _measured(net: torch.nn.Module, plan: qb.Plan, data: list[torch.Tensor]) -> float:
    """The eval function on the model the Plan quantizes to: what a measured point must hold."""
    _, _, ev = make()
    return ev(qb.quantize(net, plan, data, progress=False))["cos"]


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
            SearchConfig(presets=[], metric="cos", cache_dir=None),
        )  # fmt: skip


def test_problem_holds_exact_bytes_and_sensitivities_per_candidate(tmp_path: Path) -> None:
    setup, net = _setup(tmp_path, groups=[["q", "k"]])
    sens, sens_ev = sensitivity_phase(setup, net, None)
    assert sens_ev is setup.evaluator
    costs, preset_choice = costs_phase(setup)
    assert set(preset_choice) == {"int8-weight"} and costs.engine == "fake"
    problem = build_problem(setup, sens, costs)
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


def test_verify_spends_at_most_max_evals_and_measures_for_real(tmp_path: Path) -> None:
    setup, net, _, costs, _, verifier = _through_verify(tmp_path, max_evals=2)
    assert 1 <= verifier.n_evals <= 2
    verified = [e for e in setup.evaluator.log if e["purpose"] == "verify"]
    assert len(verified) == verifier.n_evals
    measured = [p for p in verifier.points.values() if p.measured]
    assert measured
    _, data, _ = make()
    for p in measured:  # the metric is the eval function on the quantized model, bytes exact
        assert p.metrics["cos"] == pytest.approx(_measured(net, p.plan, data), abs=1e-6)
        assert p.nbytes == costs.plan_bytes(p.choice)
    _, _, _, _, _, once = _through_verify(tmp_path, max_evals=1)
    assert once.n_evals == 1


def test_front_measures_front_evals_points_and_places_the_presets(tmp_path: Path) -> None:
    setup, net, problem, costs, choice, verifier = _through_verify(tmp_path, front_evals=2)
    before = {k for k, p in verifier.points.items() if p.measured}
    presets = front_phase(setup, verifier, problem, choice)
    new = [p for k, p in verifier.points.items() if p.measured and k not in before]
    assert 1 <= len(new) <= 2 and all(p.kind == "front" for p in new)
    assert any(not p.measured for p in verifier.points.values())  # the sweep's other points
    assert [p.name for p in presets] == ["int8-weight"]
    _, data, _ = make()
    q = qb.quantize(net, presets[0].plan, data, progress=False)
    int8 = presets[0]
    assert int8.nbytes == qb.model_nbytes(q) == costs.plan_bytes(choice["int8-weight"])
    assert int8.metrics["cos"] == pytest.approx(_measured(net, int8.plan, data), abs=1e-6)
    assert int8.holdout_metrics is None  # no held-out split


def test_holdout_judges_the_chosen_plan_and_the_presets_there(tmp_path: Path) -> None:
    _, data, ev = make()
    seen: list[int] = []

    def held_out(model: torch.nn.Module) -> dict[str, float]:
        seen.append(1)
        return {"cos": ev(model)["cos"] - 0.5}  # a harder split: the same model scores lower

    setup, net = _setup(tmp_path, holdout=held_out, max_evals=2)
    sens, _ = sensitivity_phase(setup, net, None)
    costs, choice = costs_phase(setup)
    problem = build_problem(setup, sens, costs)
    verifier = verify_phase(setup, problem, costs)
    presets = front_phase(setup, verifier, problem, choice)
    outcome = holdout_phase(setup, verifier, presets)
    chosen = outcome.chosen
    assert seen and chosen.holdout_metrics is not None and outcome.preset_points == presets
    assert chosen.holdout_metrics["cos"] == pytest.approx(
        _measured(net, chosen.plan, data) - 0.5, abs=1e-6
    )
    assert setup.evaluator.reference("holdout")["cos"] == pytest.approx(ev(net)["cos"] - 0.5)
    assert all(p.holdout_metrics is not None for p in presets)
    assert outcome.met == (chosen.holdout_drop <= 0.01 + 1e-12) and "held-out" in outcome.message


def test_result_records_the_config_and_the_chosen_plan(tmp_path: Path) -> None:
    setup, net, problem, costs, choice, verifier = _through_verify(tmp_path, max_evals=2)
    presets = front_phase(setup, verifier, problem, choice)
    outcome = holdout_phase(setup, verifier, presets)
    sens, sens_ev = sensitivity_phase(setup, net, None)  # cached now: no new evaluation
    res = assemble_result(setup, net, verifier, outcome, sens, sens_ev, costs, {"setup": 1.0})
    assert res.info["config"] == setup.config.record()
    assert res.info["config"]["latency_model"] == "<FakeEngine fake>"
    assert res.info["max_evals"] == 2 and res.info["objective"] == "bytes"
    assert res.timings == {"setup": 1.0} and res.chosen.kind == "chosen"
    assert res.plan.hardware is not None and res.plan.layers == outcome.chosen.plan.layers
    assert res.met_budget == outcome.met and res.budget.metric == "cos"
