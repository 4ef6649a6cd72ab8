"""ONNX at any size: external data beyond the protobuf limit (tested with the limit lowered)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy import onnx_export

ort = pytest.importorskip("onnxruntime")


def _run(path, x: torch.Tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_external_data_by_size(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8)).eval()
    q = qb.quantize(net, "int8-weight", progress=False)
    x = torch.randn(2, 64)
    inline = qb.export(q, tmp_path / "inline.onnx", format="onnx", example_inputs=x)
    assert list(inline.files) == ["inline.onnx"]
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 4096)
    res = qb.export(q, tmp_path / "big" / "m.onnx", format="onnx", example_inputs=x)
    assert set(res.files) == {"m.onnx", "m.onnx.data"}
    assert res.files["m.onnx"] < 8192 < res.files["m.onnx.data"]  # codes live in the data file
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["m.onnx", "m.onnx.data"]
    np.testing.assert_array_equal(_run(res.path, x), _run(inline.path, x))


def test_external_data_forced_and_forbidden(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = nn.Sequential(nn.Linear(256, 64)).eval()
    q = qb.quantize(net, "w4-g128", progress=False)
    x = torch.randn(1, 256)
    p = onnx_export.export_onnx(q, x, tmp_path / "a.onnx", external_data=True)
    assert (tmp_path / "a.onnx.data").is_file()
    p2 = onnx_export.export_onnx(q, x, tmp_path / "b.onnx", external_data=False)
    assert not (tmp_path / "b.onnx.data").exists()
    np.testing.assert_array_equal(_run(p, x), _run(p2, x))
