"""Every weight layer, whatever its class: subclasses keep their own forward, look-alikes map."""

from __future__ import annotations

import pytest
import torch
from odd_layers import GPT2MLP, Conv2dSame, FlattenLinear, SameCNN, Video, batches, make
from torch import nn
from transformers.pytorch_utils import Conv1D

import quantbalance as qb
from quantbalance.deploy import load, save
from quantbalance.evaluate.sqnr import sqnr
from quantbalance.nn import KeepsForward, QLinear, QuantModule, quantized_layers

CASES = {
    "same-cnn": (SameCNN, (4, 3, 7, 7)),
    "gpt2-conv1d": (GPT2MLP, (4, 6, 16)),
    "conv3d": (Video, (4, 2, 4, 5, 5)),
}


def quantized(case: str, plan: str = "w8a8") -> tuple[nn.Module, nn.Module, torch.Tensor]:
    cls, shape = CASES[case]
    m = make(cls)
    q = qb.quantize(m, plan, calib_data=batches(shape), progress=False)
    return m, q, batches(shape, n=1, seed=9)[0]


@pytest.mark.parametrize("case", list(CASES))
def test_every_weight_layer_is_quantized_and_close_to_float(case: str) -> None:
    m, q, x = quantized(case)
    float_layers = [n for n, mod in m.named_modules() if getattr(mod, "weight", None) is not None]
    assert [n for n, _ in quantized_layers(q)] == float_layers
    assert not any(isinstance(p, nn.Parameter) and p.dim() >= 2 for p in q.parameters())
    assert q.qb_info.coverage.summary() == (
        f"quantized {len(float_layers)} of {len(float_layers)} weight layers (100.0 % of weights)"
    )
    with torch.no_grad():
        assert sqnr(m(x), q(x)) > 28.0  # int8 weights and activations


def test_subclasses_keep_their_class_and_their_own_forward() -> None:
    m, q, x = quantized("same-cnn", "int8-weight")
    assert isinstance(q.stem, Conv2dSame) and isinstance(q.stem, QuantModule)
    assert isinstance(q.head, FlattenLinear) and isinstance(q.head, KeepsForward)
    assert isinstance(q.up, nn.ConvTranspose2d) and q.up.weight.shape == m.up.weight.shape
    assert "weight" not in q.stem._parameters and q.stem.padding == (0, 0)
    # Weight-only: the quantized model is the float model with dequantized weights, run by the
    # layers' own forwards (same padding, flatten).
    ref = make(SameCNN)
    with torch.no_grad():
        for name in ("stem", "dw", "up", "head"):
            ref.get_submodule(name).weight.copy_(q.get_submodule(name).weight)
        torch.testing.assert_close(q(x), ref(x), rtol=0, atol=0)


def test_transformers_conv1d_is_a_linear_with_a_transposed_weight() -> None:
    m, q, _ = quantized("gpt2-conv1d", "int8-weight")
    assert isinstance(m.c_fc, Conv1D) and type(q.c_fc) is QLinear
    assert q.c_fc.qweight.shape == (64, 16)  # (out, in): per-channel scales are per output
    assert q.c_fc.qweight.scale.shape == (64,)
    torch.testing.assert_close(q.c_fc.weight.t(), m.c_fc.weight, atol=2e-3, rtol=0)
    assert qb.transform.quantizable_layers(m) == {"c_fc": "Linear", "c_proj": "Linear"}


def test_gptq_runs_on_conv1d_and_leaves_own_forward_layers_to_rtn(caplog) -> None:
    m, _, x = quantized("gpt2-conv1d", "w8a8")
    g = qb.quantize(
        m, "w8a8", calib_data=batches(CASES["gpt2-conv1d"][1]), algorithm="gptq", progress=False
    )
    assert set(g.qb_info.algorithm_log["gptq"]) == {"c_fc", "c_proj"}
    with torch.no_grad():
        assert sqnr(m(x), g(x)) > 28.0
    cnn = make(SameCNN)
    with caplog.at_level("INFO", logger="quantbalance.algorithms.gptq"):
        gq = qb.quantize(
            cnn, "int8-weight", calib_data=batches((4, 3, 7, 7)), algorithm="gptq", progress=False
        )
    # stem/dw/head run their own forward (padding, flatten): no input rows, so round to nearest;
    # the exact-class forward of ConvTranspose2d has no row view either.
    assert "gptq" not in gq.qb_info.algorithm_log or not gq.qb_info.algorithm_log["gptq"]
    assert "left to round to nearest: dw, head, stem, up" in caplog.text


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_round_trip_is_bit_exact(tmp_path, case: str) -> None:
    _, q, x = quantized(case)
    r = load(save(q, tmp_path / "q.safetensors"), make(CASES[case][0], seed=5))
    assert torch.equal(r(x), q(x))
    assert [type(mod) for _, mod in quantized_layers(r)] == [
        type(mod) for _, mod in quantized_layers(q)
    ]
    for (_, a), (_, b) in zip(quantized_layers(q), quantized_layers(r), strict=True):
        assert torch.equal(a.qweight.packed, b.qweight.packed)


@pytest.mark.parametrize("case", list(CASES))
def test_to_float64_and_state_dict(case: str) -> None:
    _, q, x = quantized(case)
    y = q(x)
    keys = set(q.state_dict())
    assert all(f"{n}.qweight_packed" in keys and f"{n}.weight" not in keys
               for n, _ in quantized_layers(q))  # fmt: skip
    q.to(torch.float64)
    torch.testing.assert_close(q(x.double()).float(), y, rtol=1e-4, atol=1e-4)
    packed = [mod.qweight_packed.dtype for _, mod in quantized_layers(q)]
    assert packed == [torch.uint8] * len(packed)


def test_torch_engine_simulates_own_forward_layers(tmp_path) -> None:
    from quantbalance.deploy.torch_engine import to_torch_engine

    _, q, x = quantized("same-cnn")
    eng = to_torch_engine(q, compile=False, dtype=torch.float32)
    assert eng.qb_engine_kernels == {"dequant": 4}  # the simulation itself, in the engine dtype
    assert torch.equal(eng(x), q(x))


@pytest.mark.parametrize("case", ["same-cnn", "conv3d"])
def test_own_forward_layers_export_to_onnx_qdq(tmp_path, case: str) -> None:
    from collections import Counter

    import onnx

    from quantbalance.deploy import export_onnx, session

    _, q, x = quantized(case)
    path = export_onnx(q, x, tmp_path / "q.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    n = len(list(quantized_layers(q)))
    # every layer: its weight as integer codes + DequantizeLinear, its input as a Q/DQ pair
    assert ops["DequantizeLinear"] >= 2 * n and ops["QuantizeLinear"] >= n
    # the same-padding subclasses' own F.pad folds into the Conv nodes' pads
    assert ops["Conv"] == (2 if case == "same-cnn" else 1)
    got = session(path, intra_op_threads=1)(x)
    torch.testing.assert_close(got, q(x), rtol=1e-3, atol=1e-3)
    assert isinstance(q.stem if case == "same-cnn" else q.conv, KeepsForward)
    assert "weight_form" not in q._modules  # the user's model is untouched


def test_unsupported_look_alikes_are_named() -> None:
    m = nn.Sequential(nn.ConvTranspose1d(4, 4, 3, groups=2), nn.LSTM(4, 4))
    reasons = {n: qb.nn.unsupported_reason(mod) for n, mod in m.named_children()}
    assert reasons["0"] == "transposed convolution with groups=2 (groups=1 only)"
    assert reasons["1"].startswith("LSTM has no quantized module (supported: Linear")


@pytest.mark.parametrize("case", ["same-cnn", "gpt2-conv1d"])
def test_qat_keeps_layouts_and_own_forwards(case: str) -> None:
    from quantbalance.qat import qat

    cls, shape = CASES[case]
    m = make(cls)
    data = [(x, torch.zeros_like(m(x))) for x in batches(shape)]
    ptq = qb.quantize(m, "w8a8", calib_data=[x for x, _ in data], progress=False)
    # lr=0: the LSQ layers start from the round-to-nearest scales and keep them, so converting
    # must give back the PTQ model: the transposed/conv-transpose layouts map both ways.
    q = qat(m, "w8a8", data, nn.MSELoss(), steps=1, lr=0.0, progress=False)
    assert [type(mod) for _, mod in quantized_layers(q)] == [
        type(mod) for _, mod in quantized_layers(ptq)
    ]
    for (_, a), (_, b) in zip(quantized_layers(q), quantized_layers(ptq), strict=True):
        assert torch.equal(a.qweight.codes(), b.qweight.codes())
    x = batches(shape, n=1, seed=9)[0]
    torch.testing.assert_close(q(x), ptq(x), rtol=1e-5, atol=1e-5)


class MyAttention(nn.MultiheadAttention):
    """A user's subclass: it may compute something else, so it is not split into Linears."""


class Attention(nn.Module):
    """A subclass of nn.MultiheadAttention (kept as it is) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = MyAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_unsplittable_multihead_attention_is_reported_not_half_quantized(caplog) -> None:
    """Plain nn.MultiheadAttention becomes linear layers (tests/transform/test_attention.py);
    a subclass keeps its own forward, which reads out_proj's weight itself."""
    m = make(Attention)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING", logger="quantbalance.quantize"):
        q = qb.quantize(m, "w8a8", calib_data=[x], progress=False)
    cov = q.qb_info.coverage
    assert set(cov.quantized) == {"head"}
    assert set(cov.unsupported) == {"attn", "attn.out_proj"}
    assert "read by MultiheadAttention's own forward" in cov.reasons["attn.out_proj"]
    assert "2 weight layer(s) left float with no quantized form" in caplog.text
    with torch.no_grad():
        assert sqnr(m(x), q(x)) > 30.0


def tiny_gpt2(seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=96, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).eval()


def test_gpt2_from_transformers_quantizes_every_conv1d(tmp_path) -> None:
    m = tiny_gpt2()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    q = qb.quantize(m, "w8a8-dynamic", progress=False)
    conv1d = [n for n, mod in m.named_modules() if isinstance(mod, Conv1D)]
    assert len(conv1d) == 8 and all(type(q.get_submodule(n)) is QLinear for n in conv1d)
    cov = q.qb_info.coverage
    assert set(cov.by_plan) == {"lm_head"} and not cov.unsupported  # presets keep lm_head float
    assert q.qb_info.summary.startswith("quantized 10 of 11 weight layers")
    with torch.no_grad():
        assert sqnr(m(ids).logits, q(ids).logits) > 25.0
        r = load(save(q, tmp_path / "gpt2.safetensors"), tiny_gpt2(seed=3))
        assert torch.equal(r(ids).logits, q(ids).logits)


def test_conv1d_model_exports_to_onnx_qdq_and_runs_in_onnxruntime(tmp_path) -> None:
    from quantbalance.deploy import export_onnx, session

    _, q, x = quantized("gpt2-conv1d", "w8a8")
    path = export_onnx(q, x, tmp_path / "mlp.onnx")
    got = session(path, intra_op_threads=1)(x)
    torch.testing.assert_close(got, q(x), rtol=1e-3, atol=1e-3)


def test_in_place_quantized_layers_pickle_and_deepcopy() -> None:
    import copy
    import pickle

    _, q, x = quantized("same-cnn")
    for clone in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
        assert type(clone.stem) is type(q.stem) and isinstance(clone.stem, Conv2dSame)
        assert clone.stem.qweight_packed is not q.stem.qweight_packed
        assert torch.equal(clone(x), q(x))


@pytest.mark.parametrize("algorithm", ["awq", "bias_correction", "adaround", "cle"])
def test_calibrating_algorithms_leave_own_forward_layers_to_rtn(algorithm: str) -> None:
    m, _, x = quantized("same-cnn", "int8-weight")
    calib = batches(CASES["same-cnn"][1])
    q = qb.quantize(m, "w8a8", calib_data=calib, algorithm=algorithm, progress=False)
    assert [n for n, _ in quantized_layers(q)] == ["stem", "dw", "up", "head"]
    with torch.no_grad():
        assert sqnr(m(x), q(x)) > 28.0
