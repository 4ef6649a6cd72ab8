"""Scheme, LayerSpec, Plan and Budget from arbitrary dicts and YAML: valid objects or typed errors.

Two kinds of input: anything JSON/YAML can hold (keys from the configs' field names, random text
and non-text keys; values nested at random), and valid configs with one part replaced, removed or
added. Whatever is accepted must survive a JSON round trip unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

import quantbalance as qb
from quantbalance.search import Budget

CLASSES = {"Scheme": qb.Scheme, "LayerSpec": qb.LayerSpec, "Plan": qb.Plan, "Budget": Budget}
FIELDS = sorted(
    {f for c in CLASSES.values() for f in c.model_fields}
    | {"size", "axis", "type", "gptq", "awq", "damp", "act_order", "clip", "alpha", "re:.*", "0"}
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["per_group", "per_channel", "per_tensor", "per_token", "uniform", "nf4",
                       "static", "dynamic", "minmax", "mse", "rtn", "gptq", "awq+gptq", "float32",
                       "re:.*", "re:[", "w8a8", "fp8_e4m3", "codebook", "stochastic"])
    | st.text(max_size=10)
)  # fmt: skip
KEYS = st.sampled_from(FIELDS) | st.text(max_size=6) | st.integers(-3, 3)
ANY = st.recursive(
    LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(KEYS, c, max_size=6), max_leaves=24
)
VALID = [
    qb.Scheme(4, granularity=qb.PerGroup(32)).model_dump(mode="json"),
    qb.preset("w8a8").layers["re:.*"].model_dump(mode="json"),  # type: ignore[union-attr]
    qb.preset("w4-g128").model_dump(mode="json"),
    qb.Plan(
        layers={"0": qb.preset("nf4").layers["re:.*"], "re:.*": None},
        skip=["re:head.*"],
    ).model_dump(mode="json"),
    Budget(max_drop=0.01).model_dump(mode="json"),
    qb.LayerSpec(
        weight=qb.Scheme(4), algorithm="gptq", algorithm_args={"gptq": {"damp": 0.02}}
    ).model_dump(mode="json"),
]


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    """A valid config's data with one node replaced, removed, or given an extra key."""
    data = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    node, path = data, []
    while isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node, key=str)))
        if not isinstance(node[key], dict):
            break
        path.append(key)
        node = node[key]
    op = draw(st.sampled_from(["replace", "remove", "add"]))
    if isinstance(node, dict) and node and op != "add":
        key = draw(st.sampled_from(sorted(node, key=str)))
        if op == "remove":
            del node[key]
        else:
            node[key] = draw(ANY)
    elif isinstance(node, dict):
        node[draw(KEYS)] = draw(ANY)
    return data


def check(cls: type, data: Any) -> None:
    """``cls`` from ``data``: a QuantBalanceError or an object that round-trips through JSON."""
    try:
        obj = cls.model_validate(data)
    except qb.QuantBalanceError as e:
        assert str(e).startswith("invalid") or cls.__name__ in str(e) or "key" in str(e)
        return
    again = cls.model_validate_json(obj.model_dump_json())
    assert again == obj
    if isinstance(data, dict) and all(isinstance(k, str) for k in data):
        assert cls(**data) == obj  # the keyword form agrees


@given(st.sampled_from(sorted(CLASSES)), ANY | near_valid())
def test_configs_from_arbitrary_data(name: str, data: Any) -> None:
    check(CLASSES[name], data)


@given(near_valid())
def test_every_config_from_near_valid_data(data: Any) -> None:
    for cls in CLASSES.values():
        check(cls, data)


@given(
    st.one_of(
        st.text(max_size=200),
        ANY.map(lambda d: yaml.safe_dump(d)),
        near_valid().map(yaml.safe_dump),
    )
)
def test_plan_files_from_arbitrary_yaml(tmp_path_factory: Any, text: str) -> None:
    path = Path(tmp_path_factory.getbasetemp()) / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        plan = qb.Plan.load(path)
    except qb.QuantBalanceError:
        return
    assert qb.Plan.model_validate(yaml.safe_load(text)) == plan
