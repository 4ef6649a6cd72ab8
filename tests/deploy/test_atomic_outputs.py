"""Outputs are written atomically: an interrupted save leaves the previous file intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import quantbalance as qb
import quantbalance.io as qio


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _interrupt_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C between writing the data and renaming it into place

    monkeypatch.setattr(qio.os, "replace", interrupted)


def test_interrupted_checkpoint_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.safetensors"
    x = torch.randn(3, 8)
    first = qb.quantize(_net(0), "int8-weight", progress=False)
    qb.save(first, path)
    before = path.read_bytes()
    second = qb.quantize(_net(1), "w4-g128", progress=False)
    with monkeypatch.context() as m:
        _interrupt_rename(m)
        with pytest.raises(KeyboardInterrupt):
            qb.save(second, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]  # no temporary left
    assert torch.equal(qb.load(path, _net(0))(x), first(x))


def test_interrupted_plan_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "plan.json"
    qb.preset("w8a8").save(path)
    before = path.read_text()
    with monkeypatch.context() as m:
        _interrupt_rename(m)
        with pytest.raises(KeyboardInterrupt):
            qb.preset("w4-g128").save(path)
    assert path.read_text() == before
    assert qb.Plan.load(path) == qb.preset("w8a8")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
