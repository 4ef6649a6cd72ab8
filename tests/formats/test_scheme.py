import pytest

import quantbalance as qb
from quantbalance.errors import ConfigError, QuantBalanceError
from quantbalance.plan import Plan


def test_defaults_and_ranges() -> None:
    s = qb.Scheme(8)
    assert (s.qmin, s.qmax) == (-128, 127)
    assert s.granularity == qb.PerChannel(axis=0)
    u = qb.Scheme(4, signed=False, symmetric=False)
    assert (u.qmin, u.qmax) == (0, 15)
    g128 = qb.PerGroup(size=128)
    assert qb.Scheme(4, granularity=g128, symmetric=False).label == "int4-g128-asym"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"bits": 3, "kind": "nf4"}, "nf4"),
        ({"bits": 4, "kind": "fp8_e4m3"}, "bits=8"),
        ({"bits": 9}, "bits"),
        ({"bits": 0}, "bits"),
        ({"bits": 4, "granularity": {"type": "per_group", "size": 0}}, "size"),
        ({"bits": 4, "kind": "int4"}, "kind"),
        ({"bits": 4, "colour": "red"}, "unknown field 'colour'"),
        ({"bits": 1, "symmetric": False}, "binary"),
    ],
)
def test_bad_schemes_name_the_field(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        qb.Scheme(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, QuantBalanceError)


def test_group_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="size"):
        qb.PerGroup(size=-4)


def test_scheme_is_immutable_and_serialisable() -> None:
    s = qb.Scheme(4, granularity=qb.PerGroup(size=64), kind="nf4")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        s.bits = 3  # type: ignore[misc]
    assert qb.Scheme(**s.model_dump(mode="json")) == s


def test_nested_config_errors_are_stated_once_under_their_field() -> None:
    bad = {"layers": {"fc": {"weight": {"bits": 3, "granularity": {"type": "per_group",
                                                                   "size": -1}}}}}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        Plan.model_validate(bad)
    text = str(info.value)
    assert text.count("invalid Scheme") == 1
    assert text.count("allowed fields: axis, size, type") == 1
    assert text.count("allowed fields: bits, granularity") == 1
    lines = text.splitlines()
    assert lines[0] == "invalid Plan:"
    assert lines[1] == "  layers.fc: invalid LayerSpec:"
    assert "      granularity.per_group: invalid PerGroup:" in lines
    assert "        size=-1: Input should be greater than 0" in lines
    assert lines[-1].startswith("  allowed fields: hardware, layer_types, layers")
