"""SmoothQuant models deploy: lowered run-time divisions, checkpoints, torch engine, ONNX."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.algorithms.smoothquant import ScaledActivation, SmoothInput, smooth_model
from quantbalance.deploy import session
from quantbalance.deploy.torch_engine import Int8Linear, to_torch_engine
from quantbalance.deploy.torch_kernels import onednn_available
from quantbalance.errors import CheckpointError
from quantbalance.nn import QuantModule
from tiny_bert import bert_batches, tiny_bert

pytest.importorskip("transformers")


def out(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        r = m(**b)
    return (r.last_hidden_state if hasattr(r, "last_hidden_state") else r[0]).float()


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


_Q: dict[str, nn.Module] = {}


def sq_model() -> nn.Module:
    if "q" not in _Q:
        _Q["q"] = qb.quantize(tiny_bert(), "w8a8", bert_batches(), "smoothquant", progress=False)
    return _Q["q"]


def test_runtime_divisions_become_consumer_input_factors() -> None:
    q = sq_model()
    assert not any(isinstance(m, ScaledActivation | SmoothInput) for m in q.modules())
    lowered = q.qb_info.algorithm_log["smoothquant"]["lowered"]
    smoothed = {n.rsplit(".", 1)[0] for n, m in q.named_modules()
                if isinstance(m, QuantModule) and m.input_smooth is not None}  # fmt: skip
    assert lowered and smoothed  # the auto search smoothed something in the lowered groups
    # The float model with the same smoothing (run-time divisions) and the lowered model agree.
    ref = tiny_bert()
    sm = copy.deepcopy(ref)
    smooth_model(sm, bert_batches(), alpha=0.8)
    assert any(isinstance(m, ScaledActivation) for m in sm.modules())
    b0 = bert_batches()[0]
    torch.testing.assert_close(out(sm, b0), out(ref, b0), rtol=1e-4, atol=1e-4)
    # w8a8 + SmoothQuant beats plain w8a8 on these outlier channels, after lowering.
    plain = qb.quantize(ref, "w8a8", bert_batches(), progress=False)
    b = bert_batches(1, seed=5)[0]
    assert cos(out(q, b), out(ref, b)) > cos(out(plain, b), out(ref, b))


def test_checkpoint_round_trip_keeps_the_factors(tmp_path: Path) -> None:
    q = sq_model()
    p = qb.save(q, tmp_path / "sq.safetensors")
    r = qb.load(p, tiny_bert())
    b = bert_batches(1, seed=3)[0]
    assert torch.equal(out(r, b), out(q, b))
    names = {
        n for n, m in r.named_modules() if isinstance(m, QuantModule) and m.input_smooth is not None
    }
    assert names and all(
        torch.equal(r.get_submodule(n).input_smooth, q.get_submodule(n).input_smooth) for n in names
    )


def test_unlowerable_group_refuses_to_save(tmp_path: Path) -> None:
    bert = tiny_bert()
    smooth_model(bert, bert_batches(), alpha=0.8)  # run-time divisions in every group
    plan = qb.Plan(
        layers={"re:.*": qb.preset("w8a8").layers["re:.*"]},
        skip=["re:.*intermediate\\.dense"],  # a float consumer of the intermediate group
    )
    q = qb.quantize(bert, plan, bert_batches(), progress=False)
    kept = {n.split("layer.0.")[-1] for n, m in q.named_modules()
            if isinstance(m, ScaledActivation | SmoothInput) and "layer.0." in n}  # fmt: skip
    assert kept == {"intermediate"}  # the other groups were lowered
    with pytest.raises(CheckpointError, match=r"intermediate\.dense"):
        qb.save(q, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN int8 kernels")
@pytest.mark.isa
def test_torch_engine_matches_simulation() -> None:
    q = sq_model()
    e = to_torch_engine(q, compile=False, dtype=torch.float32)
    assert e.qb_engine_kernels["int8-onednn"] == 12
    smoothed = [m for m in e.modules() if isinstance(m, Int8Linear) and m.smooth is not None]
    assert smoothed
    b = bert_batches(1, seed=4)[0]
    assert cos(out(e, b), out(q, b)) > 0.99999


def test_onnx_export_has_the_multiply_and_matches(tmp_path: Path) -> None:
    q = sq_model()
    b = bert_batches(1, seed=4)[0]
    path = qb.export_onnx(q, b, tmp_path / "sq.onnx")
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "Mul" for n in graph.node) >= 1
    # 12 quantized inputs; q/k/v read one tensor with one range, so the exporter shares them
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == 8
    run = session(path, intra_op_threads=1)
    assert cos(run(b).float(), out(q, b)) > 0.9999
