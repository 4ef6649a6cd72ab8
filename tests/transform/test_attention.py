"""nn.MultiheadAttention from four Linear layers: same outputs, every projection quantized."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.transform import LinearMultiheadAttention, split_attention

N, L, S = 3, 5, 7
MASKS = ["none", "bool", "float", "padding", "both", "per-head"]
CASES = list(itertools.product([True, False], [False, True], [True, False], MASKS))


@pytest.mark.parametrize(("batch_first", "kv_dims", "need_weights", "masks"), CASES)
def test_same_outputs_and_weights_as_multihead_attention(
    batch_first: bool, kv_dims: bool, need_weights: bool, masks: str
) -> None:
    torch.manual_seed(0)
    dims = {"kdim": 12, "vdim": 10} if kv_dims else {}
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, **dims).eval()
    lin = LinearMultiheadAttention(mha).eval()
    g = torch.Generator().manual_seed(1)

    def t(length: int, e: int) -> torch.Tensor:
        return torch.randn(*((N, length, e) if batch_first else (length, N, e)), generator=g)

    q, k, v = t(L, 16), t(S, 12 if kv_dims else 16), t(S, 10 if kv_dims else 16)
    attn_mask = padding = None
    if masks in ("bool", "both"):
        attn_mask = torch.rand(L, S, generator=g) < 0.3
    if masks == "float":
        attn_mask = torch.randn(L, S, generator=g)
    if masks == "per-head":
        attn_mask = torch.rand(N * 4, L, S, generator=g) < 0.3
    if masks in ("padding", "both"):
        padding = torch.zeros(N, S, dtype=torch.bool)
        padding[1, -2:] = True
    for average in (True, False):
        kw = {"key_padding_mask": padding, "need_weights": need_weights, "attn_mask": attn_mask,
              "average_attn_weights": average}  # fmt: skip
        with torch.no_grad():
            want, want_w = mha(q, k, v, **kw)
            got, got_w = lin(q, k, v, **kw)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
        if need_weights:
            torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5, equal_nan=True)
        else:
            assert got_w is None


@pytest.mark.parametrize("masks", ["none", "bool", "float", "both", "per-head"])
@pytest.mark.parametrize(("bias_kv", "zero_attn"), [(True, False), (False, True), (True, True)])
def test_extra_key_value_bias_and_zero_attention(bias_kv: bool, zero_attn: bool,
                                                 masks: str) -> None:  # fmt: skip
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=bias_kv,
                                add_zero_attn=zero_attn).eval()  # fmt: skip
    if bias_kv:  # PyTorch initialises them small: make them matter
        with torch.no_grad():
            mha.bias_k.normal_()
            mha.bias_v.normal_()
    lin = LinearMultiheadAttention(mha).eval()
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(N, L, 16, generator=g), torch.randn(N, S, 16, generator=g)
    attn_mask = {"bool": torch.rand(L, S, generator=g) < 0.3, "float": torch.randn(L, S),
                 "per-head": torch.rand(N * 4, L, S, generator=g) < 0.3}.get(masks)  # fmt: skip
    padding = None
    if masks == "both":
        attn_mask = torch.rand(L, S, generator=g) < 0.3
        padding = torch.zeros(N, S, dtype=torch.bool)
        padding[2, -3:] = True
    extra = int(bias_kv) + int(zero_attn)
    with torch.no_grad():
        for need_weights in (True, False):
            kw = {"key_padding_mask": padding, "attn_mask": attn_mask,
                  "need_weights": need_weights, "average_attn_weights": False}  # fmt: skip
            want, want_w = mha(q, k, k, **kw)
            got, got_w = lin(q, k, k, **kw)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            if need_weights:
                assert got_w.shape == (N, 4, L, S + extra)
                torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)


def test_attention_with_extra_keys_is_quantized_whole() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True, add_bias_kv=True,
                                              add_zero_attn=True)  # fmt: skip
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x, x, x, need_weights=False)[0])

    net = Net().eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    q = qb.quantize(net, "w8a8", calib_data=[x], progress=False)
    cov = q.qb_info.coverage
    assert not cov.unsupported
    assert {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"} <= set(cov.quantized)
    with torch.no_grad():
        ref, out = net(x), q(x)
    assert 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()) > 30.0


def test_unbatched_and_causal() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4).eval()
    lin = LinearMultiheadAttention(mha).eval()
    x = torch.randn(5, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        for kw in ({}, {"attn_mask": causal, "is_causal": True}):
            want, want_w = mha(x, x, x, **kw)
            got, got_w = lin(x, x, x, **kw)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)


def encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2).eval()


def data() -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 6, 32, generator=g) for _ in range(2)], torch.randn(
        3, 6, 32, generator=g
    )


def test_split_keeps_the_encoder_and_leaves_the_users_model() -> None:
    model = encoder()
    _, x = data()
    copy = encoder()
    assert split_attention(copy) == ["layers.0.self_attn", "layers.1.self_attn"]
    assert isinstance(model.layers[0].self_attn, nn.MultiheadAttention)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-5, atol=1e-5)
        # padded batches: unpadded positions alike (PyTorch's nested path zeroes padded ones)
        got = copy(x, src_key_padding_mask=padding)
        want = model(x, src_key_padding_mask=padding)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_every_projection_is_quantized_saved_and_exported(tmp_path: Path) -> None:
    model = encoder()
    calib, x = data()
    q = qb.quantize(model, "w8a8", calib, progress=False)
    assert q.qb_info.summary == "quantized 12 of 12 weight layers (100.0 % of weights)"
    assert q.qb_info.attention == ["layers.0.self_attn", "layers.1.self_attn"]
    assert "layers.1.self_attn.v_proj" in q.qb_info.layers
    with torch.no_grad():
        cos = nn.functional.cosine_similarity(q(x).flatten(), model(x).flatten(), dim=0)
    assert float(cos) > 0.999
    qb.save(q, tmp_path / "q.safetensors")
    loaded = qb.load(tmp_path / "q.safetensors", model)  # the float skeleton: split on load
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    pytest.importorskip("onnxruntime")
    from quantbalance.deploy import session

    qb.export_onnx(q, x, tmp_path / "q.onnx")
    run = session(tmp_path / "q.onnx", intra_op_threads=1)
    with torch.no_grad():
        assert float((run(x) - q(x)).abs().max()) < 1e-3 * float(q(x).abs().max())
