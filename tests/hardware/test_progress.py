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


def test_long_phases_log_k_of_n_and_time_left_off_a_terminal(caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import quantbalance.progress as progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line after every step but the last
    with caplog.at_level(logging.INFO, logger="quantbalance.progress"):
        assert list(steps(range(4), "search: sensitivity")) == [0, 1, 2, 3]
        progress.phase("search", 2, 6, "single-layer sensitivity", 12.3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6  # start, 3 progress lines, done, the phase
    assert lines[1].startswith("search: sensitivity: 1 of 4 steps, ") and "s left" in lines[1]
    assert lines[3].startswith("search: sensitivity: 3 of 4 steps, ")
    assert lines[5] == "search: phase 2 of 6, single-layer sensitivity (12 s elapsed)"


def test_search_off_a_terminal_announces_its_six_phases(caplog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    import quantbalance as qb

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    xs = [torch.randn(16, 8) for _ in range(2)]

    def fidelity(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            ref, out = net(xs[0]), m(xs[0])
        return {"cos": float(torch.nn.functional.cosine_similarity(ref, out, dim=-1).mean())}

    with caplog.at_level(logging.INFO, logger="quantbalance.progress"):
        qb.search(net, (xs, fidelity), qb.Budget(max_drop=0.01), metric="cos",
                  presets=["int8-weight"], front_evals=1, max_evals=2, cache_dir=None)  # fmt: skip
    phases = [r.getMessage() for r in caplog.records if ": phase " in r.getMessage()]
    assert [p.split(", ", 1)[0] for p in phases] == [f"search: phase {k} of 6" for k in range(1, 7)]
    assert "held-out check" in phases[-1]
    verify = [r.getMessage() for r in caplog.records if "search: verify:" in r.getMessage()]
    # a disabled tqdm bar never counts: the lines count themselves (they said "0 of" each time)
    assert verify and verify == [f"search: verify: {k} of at most 2 evaluations" for k in
                      range(1, len(verify) + 1)]  # fmt: skip
