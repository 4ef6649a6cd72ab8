import logging

from quantbalance.progress import steps


def test_one_log_line_per_phase_start_and_end_off_a_terminal(caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.INFO, logger="quantbalance.progress"):
        assert list(steps(range(3), "phase x")) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "phase x: 3 steps ..." and lines[1].startswith("phase x: 3 steps done in ")
    assert len(lines) == 2
    caplog.clear()
    assert list(steps(iter("ab"), "quiet", enabled=False)) == ["a", "b"]
    assert caplog.records == []
