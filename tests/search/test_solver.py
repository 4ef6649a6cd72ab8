"""The integer program on synthetic sensitivities: known optima, checked by brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from quantbalance.errors import ConfigError
from quantbalance.search.solver import Problem, solve, sweep


def random_problem(n_layers: int, seed: int, groups: list[list[int]] | None = None) -> Problem:
    rng = random.Random(seed)
    keys, drop, nbytes, lat = [], [], [], []
    for _ in range(n_layers):
        size = rng.randint(100, 1000)
        keys.append(["float", "w8", "w4"])
        drop.append([0.0, rng.uniform(0, 0.01), rng.uniform(0.005, 0.05)])
        nbytes.append([4 * size, size + 8, size // 2 + 16])
        lat.append([1.0, rng.uniform(0.3, 0.9), rng.uniform(0.5, 1.2)])
    return Problem([f"l{i}" for i in range(n_layers)], keys, drop, nbytes, lat, groups or [])


def brute(p: Problem, minimize: str, limits: dict[str, float]) -> float | None:
    best = None
    for choice in itertools.product(*[range(len(k)) for k in p.keys]):
        if any(len({p.keys[i][choice[i]] for i in g}) > 1 for g in p.groups):
            continue
        t = p.totals(choice)
        if all(t[a] <= v + 1e-12 for a, v in limits.items()):
            best = t[minimize] if best is None else min(best, t[minimize])
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("minimize", "axis", "frac"),
    [("bytes", "drop", 0.3), ("drop", "bytes", 0.4), ("drop", "latency", 0.8)],
)
def test_matches_brute_force(seed: int, minimize: str, axis: str, frac: float) -> None:
    p = random_problem(6, seed)
    lo = solve(p, minimize=axis).totals[axis]
    hi = solve(p, minimize="drop" if axis != "drop" else "bytes").totals[axis]
    limit = lo + frac * (hi - lo)
    sol = solve(p, minimize=minimize, limits={axis: limit})
    expected = brute(p, minimize, {axis: limit})
    assert sol is not None and expected is not None
    assert sol.totals[axis] <= limit + 1e-9
    assert sol.totals[minimize] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_known_optimum() -> None:
    # layer a is cheap to quantize, layer b is not: under a tight drop budget only a goes 4-bit
    p = Problem(
        ["a", "b"],
        [["float", "w4"], ["float", "w4"]],
        drop=[[0.0, 0.001], [0.0, 0.05]],
        nbytes=[[400, 60], [400, 60]],
        latency=[[1, 1], [1, 1]],
    )
    sol = solve(p, minimize="bytes", limits={"drop": 0.01})
    assert sol is not None and sol.keys == ["w4", "float"]
    assert sol.totals == {"drop": 0.001, "bytes": 460, "latency": 2}


def test_groups_share_a_key() -> None:
    p = random_problem(5, 3, groups=[[0, 1, 2]])
    limit = solve(p, minimize="bytes").totals["bytes"] * 1.6
    sol = solve(p, minimize="drop", limits={"bytes": limit})
    assert sol is not None
    assert len({sol.keys[i] for i in (0, 1, 2)}) == 1
    assert sol.totals["drop"] == pytest.approx(brute(p, "drop", {"bytes": limit}))


def test_group_forbids_keys_not_shared() -> None:
    p = Problem(
        ["a", "b"],
        [["float", "w8", "w4"], ["float", "w8"]],
        drop=[[0, 0.001, 0.002], [0, 0.001]],
        nbytes=[[40, 10, 5], [40, 10]],
        latency=[[1, 1, 1], [1, 1]],
        groups=[[0, 1]],
    )
    sol = solve(p, minimize="bytes")
    assert sol is not None and sol.keys == ["w8", "w8"]


def test_infeasible_returns_none() -> None:
    p = random_problem(4, 1)
    smallest = solve(p, minimize="bytes").totals["bytes"]
    assert solve(p, minimize="drop", limits={"bytes": smallest - 1}) is None
    assert solve(p, minimize="drop", limits={"bytes": smallest}) is not None


def test_exclude_enumerates_next_best() -> None:
    p = random_problem(5, 7)
    limit = {"bytes": solve(p, minimize="bytes").totals["bytes"] * 1.5}
    seen: list[list[int]] = []
    drops = []
    for _ in range(4):
        sol = solve(p, minimize="drop", limits=limit, exclude=seen)
        assert sol is not None and sol.choice not in seen
        seen.append(sol.choice)
        drops.append(sol.totals["drop"])
    assert drops == sorted(drops)


def test_sweep_is_a_front() -> None:
    p = random_problem(6, 11)
    sols = sweep(p, "bytes", n_points=8)
    assert len(sols) >= 3
    b = [s.totals["bytes"] for s in sols]
    d = [s.totals["drop"] for s in sols]
    assert b == sorted(b)
    assert all(d[i] >= d[i + 1] - 1e-12 for i in range(len(d) - 1))


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="one entry per layer"):
        Problem(["a"], [["float"]], [[0.0, 1.0]], [[1]], [[1]])
    with pytest.raises(ConfigError, match="outside"):
        Problem(["a"], [["float"]], [[0.0]], [[1]], [[1]], groups=[[0, 3]])
    with pytest.raises(ConfigError, match="axis"):
        solve(random_problem(2, 0), minimize="accuracy")  # type: ignore[arg-type]
