"""The exporter's cached operator registry: the same file as without it, torch left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy import onnx_registry

pytest.importorskip("onnxscript")


def _export_bytes(q: nn.Module, path: Path) -> bytes:
    qb.export_onnx(q, torch.randn(2, 8), path)
    return path.read_bytes()


def test_cached_export_is_the_same_file_and_torch_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = onnx_registry._registry_class()
    assert cls is not None, "torch's exporter no longer has ONNXRegistry.from_torchlib"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    q = qb.quantize(net, "w8a8", [torch.randn(8, 8)], progress=False)
    cached = _export_bytes(q, tmp_path / "cached.onnx")
    original = cls.__dict__["from_torchlib"]
    assert not getattr(original.__func__, "_quantbalance_cached", False)  # restored after export
    builds = []

    def counting(klass: type, *args: object, **kwargs: object) -> object:
        builds.append(args or kwargs)
        return original.__func__(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_torchlib", classmethod(counting))
    monkeypatch.setattr(onnx_registry, "_CACHE", {})
    with onnx_registry.cached_torchlib_registry(), onnx_registry.cached_torchlib_registry():
        first = _export_bytes(q, tmp_path / "a.onnx")
        second = _export_bytes(q, tmp_path / "b.onnx")
    assert len(builds) == 1  # built once for both exports (and the nested context)
    assert cls.__dict__["from_torchlib"].__func__ is counting
    monkeypatch.undo()
    with monkeypatch.context() as m:  # the exporter without any cache: the same bytes
        m.setattr(onnx_registry, "_registry_class", lambda: None)
        plain = _export_bytes(q, tmp_path / "plain.onnx")
    assert cached == first == second == plain
