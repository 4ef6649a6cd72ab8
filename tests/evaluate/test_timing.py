"""Timing engines side by side (``evaluate.timing``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from quantbalance.evaluate.timing import time_interleaved


class FakeClock:
    """A clock that only moves when a fake engine runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_interleaved_reports_medians_of_each_engine_and_batch() -> None:
    clock = FakeClock()
    calls: list[tuple[str, int]] = []
    costs = {  # ms per call, in call order, for each (engine, batch size)
        ("a", 1): iter([5.0, 1.0, 3.0]),
        ("a", 4): iter([10.0, 30.0, 20.0]),
        ("b", 1): iter([2.0, 2.0, 100.0]),
        ("b", 4): iter([7.0, 8.0, 9.0]),
    }

    def runner(name: str) -> Any:
        def run(batch: torch.Tensor) -> None:
            calls.append((name, len(batch)))
            clock.now += next(costs[name, len(batch)]) / 1e3

        return run

    batches = {1: torch.zeros(1, 2), 4: torch.zeros(4, 2)}
    med = time_interleaved({"a": runner("a"), "b": runner("b")}, batches, 3, clock)
    assert med["a"][1] == pytest.approx(3.0) and med["a"][4] == pytest.approx(20.0)
    assert med["b"][1] == pytest.approx(2.0) and med["b"][4] == pytest.approx(8.0)
    # interleaved: every round calls every engine at every batch size before the next round
    assert calls == [("a", 1), ("a", 4), ("b", 1), ("b", 4)] * 3
