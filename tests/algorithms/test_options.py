"""Algorithm names and options are validated frozen configs, checked when a LayerSpec is built."""

from __future__ import annotations

import doctest
import json
from typing import Any

import pytest
from pydantic import ValidationError

import quantbalance as qb
from quantbalance import options
from quantbalance.algorithms import ALGORITHMS, register_algorithm
from quantbalance.algorithms.adaround import AdaRoundConfig, adaround_options
from quantbalance.algorithms.awq import awq_options
from quantbalance.algorithms.base import OPTION_SLOTS, QuantContext, options_in_force
from quantbalance.algorithms.gptq import _SLOT as GPTQ_SLOT
from quantbalance.algorithms.gptq import current_gptq_options, gptq_options
from quantbalance.algorithms.smoothquant import smoothquant_options
from quantbalance.errors import ConfigError
from quantbalance.options import (
    BUILTIN_ALGORITHMS,
    OPTIONS,
    AdaRoundOptions,
    AWQOptions,
    GPTQOptions,
    SmoothQuantOptions,
    check_algorithm,
)

W4 = qb.Scheme(4)


def test_static_tables_equal_the_registry() -> None:
    assert set(BUILTIN_ALGORITHMS) == set(ALGORITHMS)
    assert set(OPTIONS) == set(OPTION_SLOTS) == {"adaround", "awq", "gptq", "smoothquant"}
    assert all(OPTION_SLOTS[n].cls is cls for n, cls in OPTIONS.items())
    assert AdaRoundConfig is AdaRoundOptions  # the former name still works


@pytest.mark.parametrize("name", ["rtn", "gptq", "awq+gptq", "smoothquant+gptq", "cle+adaround"])
def test_known_algorithms_and_combinations_build(name: str) -> None:
    assert qb.LayerSpec(weight=W4, algorithm=name).algorithm == name
    assert check_algorithm(name) == name.split("+")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("gptqq", r"unknown algorithm 'gptqq' \(did you mean 'gptq'\?\); accepted: adaround, "
                  r"awq, bias_correction, cle, gptq, rtn, smoothquant \(combine with '\+'"),
        ("smoothquant+magic", r"unknown algorithm 'magic' in 'smoothquant\+magic'; accepted"),
        ("+", r"no algorithm in '\+'; accepted: adaround"),
    ],
)  # fmt: skip
def test_unknown_algorithm_is_rejected_at_construction(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        qb.LayerSpec(weight=W4, algorithm=name)
    data = qb.Plan(layers={"re:.*": qb.LayerSpec(weight=W4)}).model_dump(mode="json")
    data["layers"]["re:.*"]["algorithm"] = name
    with pytest.raises(ConfigError, match=r"unknown algorithm|no algorithm"):
        qb.Plan.model_validate(data)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"gptq": {"dampening": 0.1}},
         r"algorithm_args: invalid GPTQOptions:\n    unknown field 'dampening'"),
        ({"gptq": {"damp": "0.1"}}, "damp='0.1': Input should be a valid number"),
        ({"gptq": {"act_order": 1}}, "act_order=1: Input should be a valid boolean"),
        ({"gptq": {"block_size": 64.0}}, "block_size=64.0: Input should be a valid integer"),
        ({"gptq": {"block_size": 0}}, "block_size=0: Input should be greater than or equal to 1"),
        ({"gptq": {"damp": float("nan")}}, "damp=nan: Input should be a finite number"),
        ({"awq": {"max_shrink": 1.0}}, "max_shrink=1.0: Input should be less than 1"),
        ({"awq": {"no_clip": "q_proj"}}, "no_clip='q_proj': Input should be a valid tuple"),
        ({"awq": {"no_clip": [1]}}, r"no_clip.0=1: Input should be a valid string"),
        ({"smoothquant": {"alpha": 1.5}}, "alpha.*=1.5: Input should be less than or equal to 1"),
        ({"smoothquant": {"alpha": "max"}}, "alpha.*'max': Input should be 'auto'"),
        ({"adaround": {"iters": 0}}, "iters=0: Input should be greater than or equal to 1"),
        ({"adaround": {"beta": [20.0]}}, "beta=.*: Tuple should have at most|beta.1"),
        ({"adaround": {"warmup": 2}}, "warmup=2: Input should be less than or equal to 1"),
        ({"cle": {}}, r"'cle', which has no options; algorithms with options: adaround, awq, "
                      r"gptq, smoothquant"),
    ],
)  # fmt: skip
def test_bad_algorithm_args_name_the_field_and_what_is_accepted(
    args: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        qb.LayerSpec(weight=W4, algorithm="gptq", algorithm_args=args)
    if "cle" not in args:
        assert "allowed fields:" in str(err.value)


def test_valid_args_round_trip_through_plan_json_and_reach_the_steps() -> None:
    args = {
        "gptq": {"damp": 0, "act_order": False, "block_size": 64},
        "awq": {"no_clip": ("q_proj",), "max_shrink": 0.25},
        "smoothquant": {"alpha": "auto"},
        "adaround": {"iters": 10, "beta": [8, 2]},
    }
    spec = qb.LayerSpec(weight=W4, algorithm="smoothquant+gptq", algorithm_args=args)
    # Given fields only, as JSON values (int -> float where a float is expected, tuple -> list).
    assert spec.algorithm_args == {
        "gptq": {"damp": 0.0, "act_order": False, "block_size": 64},
        "awq": {"no_clip": ["q_proj"], "max_shrink": 0.25},
        "smoothquant": {"alpha": "auto"},
        "adaround": {"iters": 10, "beta": [8.0, 2.0]},
    }
    plan = qb.Plan(layers={"re:.*": spec})
    back = qb.Plan.model_validate(json.loads(plan.to_json()))
    assert back == plan and hash(back.layers["re:.*"]) == hash(spec)
    with gptq_options(damp=0.3, block_size=32):  # the spec overrides field by field
        assert GPTQ_SLOT.for_spec(spec) == GPTQOptions(block_size=64, damp=0.0, act_order=False)
        assert GPTQ_SLOT.for_spec(qb.LayerSpec(weight=W4)) == GPTQOptions(block_size=32, damp=0.3)
    assert OPTION_SLOTS["adaround"].for_spec(spec) == AdaRoundOptions(iters=10, beta=(8.0, 2.0))
    assert OPTION_SLOTS["awq"].for_spec(spec).no_clip == ("q_proj",)


def test_context_overrides_build_the_same_validated_objects() -> None:
    with gptq_options(damp=0.05) as opts:
        assert isinstance(opts, GPTQOptions) and current_gptq_options() is opts
        assert options_in_force()["gptq"] == {"block_size": 128, "damp": 0.05, "act_order": True,
                                              "static_groups": None}  # fmt: skip
        with gptq_options(block_size=8) as inner:
            assert (inner.block_size, inner.damp) == (8, 0.05)
    assert current_gptq_options() == GPTQOptions()
    with awq_options(n_grid=4) as a, smoothquant_options(alpha=0.5) as s, adaround_options() as r:
        assert (a, s, r) == (AWQOptions(n_grid=4), SmoothQuantOptions(alpha=0.5), AdaRoundOptions())
    for bad, match in [({"damp": "high"}, "valid number"), ({"dampening": 1}, "unknown field")]:
        with pytest.raises(ConfigError, match=match), gptq_options(**bad):
            pass
    with pytest.raises(ValidationError, match="frozen"):  # pydantic's, as for every config
        GPTQOptions().damp = 0.5  # type: ignore[misc]


def test_a_registered_step_is_accepted_by_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "_REGISTERED", set())
    monkeypatch.setattr("quantbalance.algorithms.base.ALGORITHMS", dict(ALGORITHMS))
    with pytest.raises(ConfigError, match="unknown algorithm 'mine'"):
        qb.LayerSpec(weight=W4, algorithm="mine+gptq")

    @register_algorithm("mine")
    def mine(ctx: QuantContext) -> None:
        pass

    assert qb.LayerSpec(weight=W4, algorithm="mine+gptq").algorithm == "mine+gptq"


def test_doctests_run() -> None:
    res = doctest.testmod(options)
    assert res.attempted >= 2 and res.failed == 0
