"""``qb.from_onnx``: ONNX in, float outputs kept, quantized and exported back to ONNX QDQ."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import quantbalance as qb
from quantbalance.cli.main import app
from quantbalance.errors import UnsupportedOpError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnx2torch") is None:  # installed --no-deps by make
    pytest.skip("needs onnx2torch: pip install --no-deps onnx2torch", allow_module_level=True)


def export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                      opset_version=17)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def fashion_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    from quantbalance.tasks.fashion import load_fashion_model

    model = load_fashion_model().eval()
    path = tmp_path_factory.mktemp("onnx") / "fashion.onnx"
    return model, export(model, torch.randn(2, 1, 28, 28), path)


def test_round_trip_keeps_the_float_outputs(fashion_onnx: tuple[nn.Module, Path]) -> None:
    model, path = fashion_onnx
    net = qb.from_onnx(path)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max() <= 1e-5
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and sum(isinstance(m, nn.Linear) for m in net.modules()) == 1


def test_quantize_and_export_back_to_qdq(fashion_onnx: tuple[nn.Module, Path], tmp_path) -> None:
    _, path = fashion_onnx
    net = qb.from_onnx(path)
    g = torch.Generator().manual_seed(1)
    calib = [torch.rand(8, 1, 28, 28, generator=g) for _ in range(4)]
    q = qb.quantize(net, "w8a8", calib_data=calib, progress=False)
    assert len(q.qb_info.layers) == 14 and not q.qb_info.unsupported
    out = qb.export_onnx(q, calib[0], tmp_path / "q.onnx")
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 14 and "Conv" in ops
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(32, 1, 28, 28, generator=g)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = q(x)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9
    assert nn.functional.cosine_similarity(got, want).min() > 0.99


def _custom_op_model(op: str, domain: str) -> onnx.ModelProto:
    h = onnx.helper
    node = h.make_node(op, ["x"], ["y"], domain=domain)
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])  # fmt: skip
    opsets = [h.make_opsetid("", 17)] + ([h.make_opsetid(domain, 1)] if domain else [])
    return h.make_model(graph, opset_imports=opsets)


def test_unconvertible_op_is_named() -> None:
    with pytest.raises(UnsupportedOpError, match=r"com\.acme::Frobnicate \(opset 1\)") as e:
        qb.from_onnx(_custom_op_model("Frobnicate", "com.acme"))
    assert e.value.ops == ["com.acme::Frobnicate (opset 1)"]


def test_cli_quantize_and_search_an_onnx_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()  # fmt: skip
    path = export(cnn, torch.randn(2, 1, 8, 8), tmp_path / "cnn.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype("f4"))
    common = ["--onnx", str(path), "--data", str(tmp_path / "x.npy"), "--batch-size", "10"]
    r = CliRunner().invoke(app, ["quantize", *common, "--preset", "w8a8", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["task"] == "onnx:cnn.onnx" and res["plans"]["w8a8"]["quant_metrics"]["kl"] < 0.01
    out = ["--out", str(tmp_path / "s"), "--cache-dir", str(tmp_path / "c")]
    r = CliRunner().invoke(app, ["search", *common, "--max-drop", "1%", *out])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s" / "report.json").read_text())["met_budget"] is True
