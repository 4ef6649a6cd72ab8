"""Executors: the search's independent evaluations in workers give the serial run's results."""

from __future__ import annotations

import contextvars
import copy
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_search import FAST, FakeEngine, make

from quantbalance.algorithms.base import apply_options, options_snapshot
from quantbalance.algorithms.gptq import current_gptq_options, gptq_options
from quantbalance.errors import ConfigError
from quantbalance.search import Budget, SearchResult, search
from quantbalance.search.executor import MemoryCache, SerialExecutor, make_executor


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each: same float reductions
    yield
    torch.set_num_threads(n)


class CopyingExecutor:
    """Two in-process "workers", each with its own deep copy of the shared state."""

    workers = 2

    def __init__(self) -> None:
        self.calls = 0

    def map(self, fn: Any, items: list[Any], shared: Any) -> list[Any]:
        copies = [copy.deepcopy(shared) for _ in range(self.workers)]
        self.calls += len(items)
        return [fn(copies[i % 2], x) for i, x in enumerate(items)]


def run(executor: Any, cache_dir: Path | None) -> SearchResult:
    net, data, ev = make()
    return search(
        net,
        (data, ev),
        Budget(max_drop=0.002),
        cache_dir=cache_dir,
        metric="cos",
        latency_model=FakeEngine(),
        executor=executor,
        **FAST,
    )  # type: ignore[arg-type]


def _same(a: SearchResult, b: SearchResult) -> None:
    assert a.plan == b.plan
    assert a.chosen.metrics == b.chosen.metrics
    assert a.sensitivity.entries == b.sensitivity.entries
    assert [(p.name, p.metrics, p.nbytes) for p in a.front] == [
        (p.name, p.metrics, p.nbytes) for p in b.front
    ]
    assert [(p.name, p.metrics) for p in a.presets] == [(p.name, p.metrics) for p in b.presets]


def test_make_executor() -> None:
    assert isinstance(make_executor(None), SerialExecutor)
    assert isinstance(make_executor("serial"), SerialExecutor)
    ex = CopyingExecutor()
    assert make_executor(ex) is ex
    with pytest.raises(ConfigError, match="accepted 'serial', 'ray'"):
        make_executor("threads")


@pytest.mark.parametrize("cached", [True, False])
def test_workers_give_the_serial_plan_and_metrics(tmp_path: Path, cached: bool) -> None:
    serial = run(None, tmp_path / "a" if cached else None)
    ex = CopyingExecutor()
    fanned = run(ex, tmp_path / "b" if cached else None)
    _same(serial, fanned)
    pairs = sum(len(o) - 1 for o in serial.sensitivity.specs.values())  # float excluded
    assert ex.calls >= pairs + len(FAST["presets"])  # type: ignore[arg-type]
    assert not any(math.isnan(p.nbytes) for p in fanned.front)


def test_memory_cache_keeps_values_without_a_folder() -> None:
    c = MemoryCache(None)
    assert c.get("eval", {"a": 1}) is None
    c.put("eval", {"a": 1}, {"m": 2.0})
    assert c.get("eval", {"a": 1}) == {"m": 2.0} and c.get("sens", {"a": 1}) is None


def test_algorithm_options_travel_to_workers() -> None:
    with gptq_options(damp=0.05, block_size=64):
        snap = options_snapshot()

    def fresh() -> Any:
        apply_options(snap)
        return current_gptq_options()

    got = contextvars.Context().run(fresh)  # a context that never saw the ``with`` block
    assert (got.damp, got.block_size) == (0.05, 64)
    assert current_gptq_options().damp == 0.01  # this context is untouched


def test_cli_ray_option_picks_the_address() -> None:
    from quantbalance.cli.search_cmd import search_config
    from quantbalance.search.executor import RayExecutor

    assert search_config().executor is None
    local, head = search_config(ray="local").executor, search_config(ray="10.0.0.1:6379").executor
    assert isinstance(local, RayExecutor) and local.address is None
    assert isinstance(head, RayExecutor) and head.address == "10.0.0.1:6379"
    ray_module = sys.modules.get("ray")  # validating the options connects to nothing
    assert ray_module is None or not ray_module.is_initialized()


ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import test_search

    # Ray workers cannot import this test folder: send test_search's TinyNet and eval by value
    ray.cloudpickle.register_pickle_by_value(test_search)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(test_search)


def test_ray_search_equals_serial(local_ray: None, tmp_path: Path) -> None:
    from quantbalance.search.executor import RayExecutor

    serial = run(None, None)
    fanned = run(RayExecutor(workers=2), None)
    _same(serial, fanned)
    assert fanned.info["layers"] == serial.info["layers"]
