"""Which QDQ chains of an exported graph ONNX Runtime turns into integer kernels (issue 12).

ONNX Runtime itself moves a ``QuantizeLinear`` up through ``Relu`` (dropped when the zero point
is the type's minimum), ``MaxPool``, ``Reshape`` and ``Flatten`` (its QDQ propagation), so a
chain the simulation quantizes at every convolution input becomes integer kernels from end to
end without any rewrite in the exporter. A tensor the simulation keeps float (a residual ``Add``
input) keeps no Q/DQ: the exporter never quantizes what was not simulated.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy import export_onnx, session
from quantbalance.deploy.ort import DISABLED_OPTIMIZERS


def optimized_ops(path: Path, tmp: Path) -> Counter[str]:
    """Op types of the graph ONNX Runtime runs (all optimizations, OrtSession's settings)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp / "optimized.onnx")
    so.intra_op_num_threads = 1
    ort.InferenceSession(
        str(path), so, providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )  # fmt: skip
    return Counter(n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node)


def data(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 16, 16, generator=g) for _ in range(n)]


def test_relu_maxpool_flatten_chain_runs_as_integer_kernels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()  # fmt: skip
    q = qb.quantize(m, "w8a8", calib_data=data(4, 0), progress=False)
    path = export_onnx(q, data(1, 1)[0], tmp_path / "chain.onnx")
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["MatMulIntegerToFloat"] == 1
    assert ops["NhwcMaxPool"] == 1  # max-pool on uint8 codes: the quantizer moved above it
    assert not {"Conv", "FusedConv", "MatMul", "Relu", "MaxPool"} & set(ops)
    run = session(path, intra_op_threads=1)
    for x in data(2, 2):
        with torch.no_grad():
            want = q(x)
        got = run(x)
        cos = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert float(cos) >= 0.9999
        assert torch.equal(got.argmax(1), want.argmax(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv(x))  # residual Add on float tensors (as simulated)
        return self.head(x.mean(dim=(2, 3)))


def test_float_residual_add_gets_no_qdq(tmp_path: Path) -> None:
    torch.manual_seed(0)
    q = qb.quantize(Residual().eval(), "w8a8", calib_data=data(4, 0), progress=False)
    path = export_onnx(q, data(1, 1)[0], tmp_path / "res.onnx")
    graph = onnx.load(str(path)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    adds = [n for n in graph.node if n.op_type == "Add" and len(n.input) == 2]
    residual = [n for n in adds if all(i in made_by for i in n.input)]
    assert residual, "the residual Add is in the graph"
    for n in residual:  # neither input went through a quantizer the simulation does not have
        assert {made_by[i] for i in n.input}.isdisjoint({"DequantizeLinear", "QuantizeLinear"})
    ops = optimized_ops(path, tmp_path)
    # the convolution feeding the float Add keeps float output; the stem's output is shared
    # with the float Add too: neither can be an integer-output QLinearConv
    assert ops["QLinearConv"] == 0
    run = session(path, intra_op_threads=1)
    x = data(1, 3)[0]
    with torch.no_grad():
        want = q(x)
    cos = nn.functional.cosine_similarity(run(x).flatten(), want.flatten(), dim=0)
    assert float(cos) >= 0.9999
