"""Positional arguments where the ecosystem uses them: ``PerGroup(128)``, ``PerChannel(0)``."""

import pytest

import quantbalance as qb
from quantbalance.errors import ConfigError


def test_positional_granularities_equal_the_keyword_forms() -> None:
    assert qb.PerGroup(128) == qb.PerGroup(size=128)
    assert qb.PerGroup(64, 0) == qb.PerGroup(size=64, axis=0)
    assert qb.PerChannel(0) == qb.PerChannel(axis=0)
    assert qb.PerChannel(1).axis == 1
    assert qb.Scheme(4, granularity=qb.PerGroup(32)).label == "int4-g32"
    assert qb.Scheme(8) == qb.Scheme(bits=8)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: qb.PerGroup(128, 0, 1), r"PerGroup\(\) takes at most 2 \(size, axis\).*"
         r"write PerGroup\(size=\.\.\., axis=\.\.\.\)"),
        (lambda: qb.PerTensor(1), r"PerTensor\(\) takes no arguments by position.*PerTensor\(\)"),
        (lambda: qb.PerGroup(128, size=64), "size given twice"),
        (lambda: qb.PerGroup("x"), r"size='x'"),
        (lambda: qb.PerGroup(0), r"size=0.*greater than 0"),
        (lambda: qb.Scheme(4, 8), r"write Scheme\(bits=\.\.\.\)"),
        (lambda: qb.Budget(0.01), r"write Budget\(max_drop=\.\.\."),
        (lambda: qb.LayerSpec(qb.Scheme(8)), r"LayerSpec\(\) takes no arguments by position"),
    ],
)  # fmt: skip
def test_wrong_positional_use_says_what_to_write(make: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()  # type: ignore[operator]
