import copy
import logging

import pytest
import torch
from tiny import TinyRec, cnn_batches, rec_batches, trained_cnn
from torch import nn

import quantbalance as qb
from quantbalance.errors import CalibrationError, ConfigError, NonFiniteError, PlanError
from quantbalance.nn import QConv1d, QConv2d, QEmbedding, QLinear
from quantbalance.quantize import is_quantized
from quantbalance.transform import fold_batchnorm


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_bn_folding_keeps_outputs() -> None:
    m = trained_cnn()
    x = cnn_batches(1)[0]
    ref = m(x)
    f = copy.deepcopy(m)
    pairs = fold_batchnorm(f)
    assert set(pairs) == {("stem", "bn"), ("dw", "dw_bn")}
    assert isinstance(f.bn, nn.Identity)
    assert torch.allclose(f(x), ref, atol=1e-5)


def test_w8a8_cnn_close_to_float_and_model_untouched() -> None:
    m = trained_cnn()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calib = cnn_batches(3)
    q = qb.quantize(m, "w8a8", calib_data=calib, progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert isinstance(q.stem, QConv2d) and isinstance(q.dw, QConv2d) and q.dw.groups == 8
    assert isinstance(q.head, QLinear)
    x = cnn_batches(1, seed=9)[0]
    with torch.no_grad():
        assert cos(m(x), q(x)) > 0.999
    assert q.qb_info.folded == [("stem", "bn"), ("dw", "dw_bn")]
    assert float(q.stem.input_quantizer.scale) > 0
    assert q.qb_plan.name == "w8a8"


def test_lower_bits_cost_more_fidelity() -> None:
    m = trained_cnn()
    x = cnn_batches(1, seed=9)[0]
    calib = cnn_batches(2)
    with torch.no_grad():
        c8 = cos(m(x), qb.quantize(m, "w8a8", calib, progress=False)(x))
        c4 = cos(m(x), qb.quantize(m, "w4a8", calib, progress=False)(x))
    assert c8 > c4


def test_bitwidths_shorthand_logs_and_checks_length(caplog) -> None:  # type: ignore[no-untyped-def]
    m = trained_cnn()
    with caplog.at_level(logging.INFO, logger="quantbalance"):
        q = qb.quantize(m, bitwidths=[8, 8, 4, 8], progress=False)
    assert "layer stem (Conv2d): 8-bit weights" in caplog.text
    assert "layer pw (Conv2d): 4-bit weights" in caplog.text
    assert q.pw.qweight.scheme.bits == 4
    with pytest.raises(ConfigError, match=r"4 quantizable layers: stem \(Conv2d\), dw"):
        qb.quantize(m, bitwidths=[8, 4])


def test_quantize_dynamic_shorthand() -> None:
    m = TinyRec().eval()
    q = qb.quantize_dynamic(m, {nn.Linear, nn.Conv1d}, dtype="int8")
    assert isinstance(q.mlp[0], QLinear) and q.mlp[0].input_quantizer.mode == "dynamic"
    assert isinstance(q.seq, QConv1d)
    assert isinstance(q.users, nn.Embedding)  # not asked for
    b = rec_batches(1)[0]
    with torch.no_grad():
        assert cos(m(**b), q(**b)) > 0.99
    with pytest.raises(ConfigError, match="int8"):
        qb.quantize_dynamic(m, dtype="int2")


def test_embedding_tables_rowwise_and_dict_batches() -> None:
    m = TinyRec().eval()
    spec = qb.LayerSpec(weight=qb.Scheme(4, granularity=qb.PerChannel(axis=0)))
    plan = qb.Plan(
        layers={"users": spec, "items": spec, "re:.*": qb.preset("w8a8").layers["re:.*"]}
    )
    q = qb.quantize(m, plan, calib_data=rec_batches(2), progress=False)
    assert isinstance(q.users, QEmbedding) and q.users.qweight.scale.shape == (50,)
    assert isinstance(q.mlp[0], QLinear) and not q.mlp[0].input_quantizer.observing
    b = rec_batches(1, seed=5)[0]
    with torch.no_grad():
        assert cos(m(**b), q(**b)) > 0.98
    # 4-bit rows: 50*16/2 bytes + 50 float32 scales.
    assert q.users.qweight.nbytes == 400 + 200


def test_unsupported_layers_are_listed_and_kept_float() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.ConvTranspose1d(4, 4, 1, groups=2))
    q = qb.quantize(m, "int8-weight", progress=False)
    assert q.qb_info.unsupported == {"1": "LayerNorm", "2": "ConvTranspose1d"}
    assert isinstance(q[2], nn.ConvTranspose1d)


def test_bad_inputs_raise_and_leave_model_untouched() -> None:
    m = trained_cnn()
    with pytest.raises(CalibrationError, match="needs calibration data"):
        qb.quantize(m, "w8a8")
    with pytest.raises(CalibrationError, match="empty"):
        qb.quantize(m, "w8a8", calib_data=[])
    with pytest.raises(CalibrationError, match=r"batch 0 \(\(2, 3, 5, 5\) float32\)"):
        qb.quantize(m, "w8a8", calib_data=[torch.randn(2, 3, 5, 5)], progress=False)
    with pytest.raises(PlanError, match="close matches: stem"):
        qb.quantize(m, {"layers": {"stemm": {"weight": {"bits": 8}}}})
    bad = copy.deepcopy(m)
    with torch.no_grad():
        bad.pw.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="layer 'pw'"):
        qb.quantize(bad, "int8-weight")
    assert torch.isnan(bad.pw.weight).any()  # untouched, still the user's
    with pytest.raises(ConfigError, match="unknown algorithm"):
        qb.quantize(m, "int8-weight", algorithm="magic")
    with pytest.raises(qb.UnsupportedError, match=r"nn\.Module"):
        qb.quantize("model", "int8-weight")  # type: ignore[arg-type]


def test_static_activation_handles_additive_mask_infinities() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.proj(x + mask)  # -inf where masked, as a BERT additive mask

    m = Masked().eval()
    x = torch.randn(4, 3, 6)
    mask = torch.zeros(4, 3, 6)
    mask[:, 2, :] = float("-inf")
    q = qb.quantize(m, "w8a8", calib_data=[(x, mask)], progress=False)
    quant = q.proj.input_quantizer
    assert torch.isfinite(quant.scale) and float(quant.scale) < 1.0


def test_inplace_quantizes_the_given_model_with_the_same_result() -> None:
    net = trained_cnn()
    batches = cnn_batches()
    copied = qb.quantize(net, "w8a8", calib_data=batches, progress=False)
    assert not is_quantized(net)  # default: the model is left alone
    q = qb.quantize(net, "w8a8", calib_data=batches, progress=False, inplace=True)
    assert q is net and is_quantized(net)
    x = batches[0]
    with torch.no_grad():
        assert torch.equal(q(x), copied(x))
