"""Quantized residual additions in the QDQ export: ORT runs them as QLinearAdd (issue 12).

With ``Plan.residual_activation`` the simulation quantizes each residual ``Add``'s inputs and
sum, so the exporter writes Q/DQ around it and ONNX Runtime fuses every convolution into
``QLinearConv`` and every ``Add`` into ``QLinearAdd``; without it the export is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from test_onnx_fusion import Residual, optimized_ops
from torch import nn

import quantbalance as qb
from quantbalance.deploy import export_onnx, session
from quantbalance.deploy.onnx_export import to_onnx
from quantbalance.nn import QuantAdd
from quantbalance.plan import preset
from quantbalance.tasks.fashion import load_fashion
from quantbalance.tasks.fashion_model import FashionNet
from test_fashion_task import _data_present


def data(n: int, seed: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def check_parity(q: nn.Module, head: str, path: Path, batches: list[torch.Tensor]) -> None:
    """ORT against the simulation: within one input quantization step of the float head."""
    lin = q.get_submodule(head)
    step = float(lin.input_quantizer.scale) * float(lin.qweight.dequantize().abs().sum(1).max())
    run = session(path, intra_op_threads=1)
    for x in batches:
        with torch.no_grad():
            want = q(x)
        got = run(x)
        cos = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert float(cos) >= 0.999
        assert float((got - want).abs().max()) <= step
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_residual_add_gets_qdq_and_runs_as_qlinearadd(tmp_path: Path) -> None:
    torch.manual_seed(0)
    shape = (8, 3, 16, 16)
    q = qb.quantize(Residual().eval(), "w8a8-residual", data(4, 0, shape), progress=False)
    path = export_onnx(q, data(1, 1, shape)[0], tmp_path / "res.onnx")
    graph = onnx.load(str(path)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    read_by: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            read_by.setdefault(i, []).append(n.op_type)
    adds = [n for n in graph.node if n.op_type == "Add" and all(i in made_by for i in n.input)]
    residual = [n for n in adds if {made_by[i] for i in n.input} == {"DequantizeLinear"}]
    assert len(residual) == 1  # both inputs dequantized codes
    relu = read_by[residual[0].output[0]]
    assert relu == ["Relu"]  # then the ReLU the simulation applies before the sum's quantizer
    relu_out = next(n.output[0] for n in graph.node if n.op_type == "Relu"
                    and n.input[0] == residual[0].output[0])  # fmt: skip
    assert read_by[relu_out] == ["QuantizeLinear"]
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1
    assert ops["Add"] <= 1  # the float head's bias, after its MatMulIntegerToFloat
    assert not {"Conv", "FusedConv", "Relu"} & set(ops)
    check_parity(q, "head", path, data(2, 2, shape))


def test_fashionnet_runs_all_convolutions_and_adds_in_int8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    shape = (8, 1, 28, 28)
    q = qb.quantize(FashionNet(width=8).eval(), "w8a8-residual", data(4, 0, shape),
                    progress=False)  # fmt: skip
    path = export_onnx(q, data(1, 1, shape)[0], tmp_path / "fashion.onnx")
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == 13 and ops["QLinearAdd"] == 5
    assert ops["Add"] <= 1  # the float head's bias, after its MatMulIntegerToFloat
    assert not {"Conv", "FusedConv", "Relu"} & set(ops)
    check_parity(q, "fc", path, data(2, 2, shape))


def test_option_off_exports_the_same_bytes() -> None:
    torch.manual_seed(0)
    shape = (2, 1, 28, 28)
    model, calib, x = FashionNet(width=4).eval(), data(2, 0, shape), data(1, 1, shape)[0]
    plain = qb.quantize(model, "w8a8", calib, progress=False)
    unset = preset("w8a8").model_copy(update={"residual_activation": None})
    explicit = qb.quantize(model, unset, calib, progress=False)
    assert not any(isinstance(m, QuantAdd) for m in explicit.modules())
    a, b = to_onnx(plain, x), to_onnx(explicit, x)
    assert a.SerializeToString() == b.SerializeToString()
    made_by = {o: n.op_type for n in a.graph.node for o in n.output}
    adds = [n for n in a.graph.node if n.op_type == "Add" and all(i in made_by for i in n.input)]
    assert len(adds) >= 5  # the five residual sums, float as simulated: no Q/DQ on them
    assert all(made_by[i] != "DequantizeLinear" for n in adds for i in n.input)
    props = {p.key: p.value for p in a.metadata_props}
    assert "residual_activation" not in props["quantbalance.plan"]


def test_trained_fashion_model_matches_in_onnx_runtime(tmp_path: Path) -> None:
    if not _data_present():
        pytest.skip("Fashion-MNIST missing: `apt-get install dataset-fashion-mnist`")
    task = load_fashion(n_calib=256, n_test=256, eval_batch=256)
    q = qb.quantize(task.model, "w8a8-residual", task.calib_data, progress=False)
    x = task.example_inputs
    path = export_onnx(q, x, tmp_path / "fashion.onnx")
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == 13 and ops["QLinearAdd"] == 5
    run = session(path, intra_op_threads=1)
    with torch.no_grad():
        want = q(x)
    got = run(x)
    cos = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert float(cos) >= 0.999
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.98
