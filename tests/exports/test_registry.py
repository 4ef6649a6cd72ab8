"""``qb.export`` dispatch (qb checkpoint, ONNX) and the ``quantbalance export`` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import quantbalance as qb
from quantbalance.cli.main import app
from quantbalance.errors import ConfigError
from quantbalance.exports import FORMATS, ExportResult


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def test_formats_and_unknown_format(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert FORMATS == ("qb", "onnx", "compressed-tensors", "gguf")
    q = qb.quantize(_net(), "int8-weight", progress=False)
    with pytest.raises(ConfigError, match="accepted: qb, onnx, compressed-tensors, gguf"):
        qb.export(q, tmp_path / "m.x", format="tflite")
    assert not any(tmp_path.iterdir())


def test_qb_export_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = _net()
    q = qb.quantize(net, "int8-weight", progress=False)
    res = qb.export(q, tmp_path / "m.safetensors", format="qb")
    assert isinstance(res, ExportResult) and res.format == "qb"
    assert res.nbytes == (tmp_path / "m.safetensors").stat().st_size
    assert set(res.layers) == {"0", "2"}
    x = torch.randn(3, 16)
    assert torch.equal(qb.load(res.path, net)(x), q(x))


def test_onnx_export_needs_inputs_and_matches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    q = qb.quantize(_net(), "int8-weight", progress=False)
    with pytest.raises(ConfigError, match="example_inputs"):
        qb.export(q, tmp_path / "m.onnx", format="onnx")
    x = torch.randn(3, 16)
    res = qb.export(q, tmp_path / "m.onnx", format="onnx", example_inputs=x)
    assert res.files == {"m.onnx": (tmp_path / "m.onnx").stat().st_size}
    opts = ort.SessionOptions()  # the graph as written (fusions are deploy/ort.py's business)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(res.path), opts, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), q(x).detach(), atol=1e-4, rtol=1e-4)


def test_cli_export_qb_and_onnx_from_plan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    plan = qb.preset("int8-weight").save(tmp_path / "plan.json")
    for fmt, name in (("qb", "m.safetensors"), ("onnx", "m.onnx")):
        out = tmp_path / name
        args = ["export", "--format", fmt, "--plan", str(plan), "--model", "export_factories:mlp",
                "--out", str(out)]  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        summary = json.loads((tmp_path / f"{name}.export.json").read_text())
        assert summary["nbytes"] == out.stat().st_size > 0
        assert summary["layers"] == {"0": "W int8-per-channel", "2": "W int8-per-channel"}
    r = runner.invoke(app, ["export", "--format", "tflite", "--plan", str(plan), "--model",
                            "export_factories:mlp", "--out", str(tmp_path / "x")])  # fmt: skip
    assert r.exit_code == 2 and "accepted: qb, onnx" in " ".join(r.output.split())
    missing = str(tmp_path / "none.json")
    args = ["export", "--format", "qb", "--plan", missing, "--model", "export_factories:mlp",
            "--out", str(tmp_path / "x")]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "no such file" in " ".join(r.output.split())  # rich wraps


def test_quantize_export_option_writes_each_plan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(app, ["quantize", "--model", "export_factories:mlp", "--preset",
                                 "int8-weight", "--preset", "w4-g128", "--export", "qb",
                                 "--out", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 0, r.output
    a = (tmp_path / "int8-weight" / "model.safetensors").stat().st_size
    b = (tmp_path / "w4-g128" / "model.safetensors").stat().st_size
    assert b < a
