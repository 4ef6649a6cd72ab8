import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import quantbalance as qb
from quantbalance.errors import NonFiniteError, UnsupportedError
from quantbalance.formats.granularity import expand_params


def sqnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(x.pow(2).sum() / (x - y).pow(2).sum()))


def gauss(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


grans = st.sampled_from(
    [qb.PerTensor(), qb.PerChannel(axis=0), qb.PerChannel(axis=1), qb.PerToken(),
     qb.PerGroup(size=4), qb.PerGroup(size=7), qb.PerGroup(size=5, axis=0)]
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 20),
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    signed=st.booleans(),
    gran=grans,
    seed=st.integers(0, 10_000),
)
def test_uniform_error_bound_and_code_range(rows, cols, bits, symmetric, signed, gran, seed):  # type: ignore[no-untyped-def]
    assume(signed or not symmetric)  # unsigned symmetric: see the next test
    x = gauss(rows, cols, seed=seed) * 3
    scheme = qb.Scheme(bits, symmetric=symmetric, signed=signed, granularity=gran)
    qt = qb.quantize_tensor(x, scheme)
    u = qt.codes().to(torch.int32)
    assert int(u.min()) >= 0 and int(u.max()) <= scheme.qmax - scheme.qmin
    scale = expand_params(qt.scale.float(), qt.shape, gran)
    err = (x - qt.dequantize()).abs()
    # Every value lies inside its block's range here (min-max ranges), so error <= scale / 2.
    assert bool((err <= scale / 2 + 2e-6 * (x.abs() + 1)).all())  # float32 rounding slack
    # Zero is exactly representable.
    z = x.clone()
    z[0, 0] = 0.0
    assert float(qb.quantize_tensor(z, scheme).dequantize()[0, 0]) == 0.0
    # Serialisation round trip is exact.
    back = qb.QuantizedTensor.from_dict(qt.to_dict())
    assert torch.equal(back.dequantize(), qt.dequantize())


def test_unsigned_symmetric_centres_on_half_range() -> None:
    x = gauss(4, 32)
    qt = qb.quantize_tensor(x, qb.Scheme(8, signed=False))
    assert int(qt.codes().min()) >= 0 and int(qt.codes().max()) <= 255
    assert sqnr(x, qt.dequantize()) > 40


def test_seed_worked_example_divides_by_scale() -> None:
    # README example: 8-bit asymmetric unsigned, range [-1, 3]: scale 4/255, zero point 64.
    x = torch.tensor([[-1.0, 3.0, 1.5, 0.0]])
    qt = qb.quantize_tensor(
        x, qb.Scheme(8, symmetric=False, signed=False, granularity=qb.PerTensor())
    )
    assert math.isclose(float(qt.scale), 4 / 255, rel_tol=1e-6)
    assert int(qt.zero_point) == 64
    assert qt.codes().tolist() == [[0, 255, 160, 64]]
    assert abs(float(qt.dequantize()[0, 2]) - 1.5059) < 1e-3


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_sqnr_rises_with_bits(bits: int) -> None:
    w = gauss(256, 512)
    lo = qb.quantize_tensor(w, qb.Scheme(bits - 1 if bits > 2 else 2)).dequantize()
    hi = qb.quantize_tensor(w, qb.Scheme(bits)).dequantize()
    if bits > 2:
        assert sqnr(w, hi) > sqnr(w, lo) + 4.5  # ~6 dB per bit


def test_sqnr_thresholds_on_gaussian_weights() -> None:
    w = gauss(512, 1024)
    assert sqnr(w, qb.quantize_tensor(w, qb.Scheme(8)).dequantize()) >= 40
    g128 = qb.PerGroup(size=128)
    assert sqnr(w, qb.quantize_tensor(w, qb.Scheme(4, granularity=g128)).dequantize()) >= 18
    fp8 = qb.quantize_tensor(w, qb.Scheme(8, kind="fp8_e4m3")).dequantize()
    assert sqnr(w, fp8) >= 28


@pytest.mark.parametrize("group", [32, 64, 128])
def test_nf4_beats_uniform_4bit_at_same_group(group: int) -> None:
    w = gauss(256, 1024)
    g = qb.PerGroup(size=group)
    nf4 = qb.quantize_tensor(w, qb.Scheme(4, kind="nf4", granularity=g)).dequantize()
    int4 = qb.quantize_tensor(w, qb.Scheme(4, granularity=g)).dequantize()
    assert (w - nf4).pow(2).mean() < (w - int4).pow(2).mean()


def test_kmeans_codebook_beats_uniform_3bit() -> None:
    w = gauss(128, 1024)
    for gran in (qb.PerChannel(), qb.PerGroup(size=128)):
        lut = qb.quantize_tensor(w, qb.Scheme(3, kind="codebook", granularity=gran)).dequantize()
        uni = qb.quantize_tensor(w, qb.Scheme(3, symmetric=False, granularity=gran)).dequantize()
        assert (w - lut).pow(2).mean() < 0.8 * (w - uni).pow(2).mean()


def test_weighted_kmeans_protects_important_columns() -> None:
    w = gauss(64, 256)
    imp = torch.ones_like(w)
    imp[:, :16] = 100.0
    scheme = qb.Scheme(2, kind="codebook")
    plain = qb.quantize_tensor(w, scheme).dequantize()
    weighted = qb.quantize_tensor(w, scheme, weights=imp).dequantize()
    err = lambda d: float((w[:, :16] - d[:, :16]).pow(2).mean())  # noqa: E731
    assert err(weighted) < err(plain)


def test_binary_weights() -> None:
    w = gauss(16, 64)
    qt = qb.quantize_tensor(w, qb.Scheme(1))
    d = qt.dequantize()
    assert torch.equal(torch.sign(d), torch.sign(w))
    assert torch.allclose(d.abs().mean(1), w.abs().mean(1), rtol=1e-5)
    assert qt.nbytes == 16 * 64 // 8 + 16 * 4


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        # 4096 elements as (32, 128); groups of 64 -> 64 blocks.
        (qb.Scheme(8), 4096 + 32 * 4),
        (qb.Scheme(4, granularity=qb.PerGroup(size=64)), 2048 + 64 * 4),
        (qb.Scheme(4, symmetric=False, granularity=qb.PerGroup(size=64)), 2048 + 64 * 4 + 64),
        (qb.Scheme(3, granularity=qb.PerTensor()), 1536 + 4),
        (qb.Scheme(4, kind="nf4", granularity=qb.PerGroup(size=64), scale_dtype="float16"),
         2048 + 64 * 2),
        (qb.Scheme(3, kind="codebook"), 1536 + 32 * 8 * 4),
        (qb.Scheme(8, kind="fp8_e5m2", granularity=qb.PerTensor()), 4096 + 4),
        (qb.Scheme(5, granularity=qb.PerChannel(), scale_dtype="bfloat16"), 2560 + 32 * 2),
    ],
)  # fmt: skip
def test_nbytes_matches_documented_formula(scheme: qb.Scheme, expected: int) -> None:
    qt = qb.quantize_tensor(gauss(32, 128), scheme)
    assert qt.nbytes == expected
    saved = sum(t.numel() * t.element_size() for k, t in qt.to_dict().items() if k != "meta")
    assert saved == expected


def test_partial_group_nbytes() -> None:
    qt = qb.quantize_tensor(gauss(3, 576), qb.Scheme(4, granularity=qb.PerGroup(size=128)))
    assert qt.nbytes == 3 * 576 // 2 + 3 * 5 * 4


def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    x = torch.full((1, 20000), 0.3)
    x[0, 0] = 1.0  # sets the scale to 1/127.5
    s = qb.Scheme(8, rounding="stochastic", granularity=qb.PerTensor())
    a = qb.quantize_tensor(x, s, generator=torch.Generator().manual_seed(1)).dequantize()
    b = qb.quantize_tensor(x, s, generator=torch.Generator().manual_seed(1)).dequantize()
    assert torch.equal(a, b)
    assert abs(float(a[0, 1:].mean()) - 0.3) < 2e-4
    nearest = qb.quantize_tensor(x, qb.Scheme(8, granularity=qb.PerTensor())).dequantize()
    assert abs(float(nearest[0, 1:].mean()) - 0.3) > 1e-3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_raise(bad: float) -> None:
    w = gauss(4, 4)
    w[1, 2] = bad
    with pytest.raises(NonFiniteError, match=r"layer\.x"):
        qb.quantize_tensor(w, qb.Scheme(8), name="layer.x")


def test_integer_and_empty_inputs_raise() -> None:
    with pytest.raises(UnsupportedError, match="floating-point"):
        qb.quantize_tensor(torch.ones(3, 3, dtype=torch.int32), qb.Scheme(8))
    with pytest.raises(UnsupportedError, match="empty"):
        qb.quantize_tensor(torch.ones(0, 3), qb.Scheme(8))


def test_dtype_is_preserved() -> None:
    w = gauss(8, 32).to(torch.bfloat16)
    assert qb.quantize_tensor(w, qb.Scheme(8)).dequantize().dtype == torch.bfloat16


def test_fake_quantize_matches_real_and_passes_gradients() -> None:
    w = gauss(16, 96).requires_grad_(True)
    for s in (qb.Scheme(4, granularity=qb.PerGroup(size=32)), qb.Scheme(3, symmetric=False)):
        fq = qb.fake_quantize(w, s)
        assert torch.allclose(fq, qb.quantize_tensor(w.detach(), s).dequantize(), atol=1e-6)
        fq.sum().backward()
        # STE: gradient 1 inside the clipping range, 0 only where a block's extreme was clipped.
        assert w.grad is not None and set(w.grad.unique().tolist()) <= {0.0, 1.0}
        assert float(w.grad.mean()) > 0.95
        w.grad = None
    nf = qb.fake_quantize(w, qb.Scheme(4, kind="nf4"))
    assert torch.allclose(nf, qb.quantize_tensor(w.detach(), qb.Scheme(4, kind="nf4")).dequantize())


def test_fake_quantize_learnable_scale_gets_gradient() -> None:
    x = gauss(8, 32) * 2
    scale = torch.full((8,), 0.05, requires_grad=True)
    qb.fake_quantize(x, qb.Scheme(4), scale=scale).pow(2).sum().backward()
    assert scale.grad is not None and bool((scale.grad != 0).any())


def test_scale_beyond_the_storage_dtype_is_refused() -> None:
    """fp16 scales top out at 65504: an int8 block of |w| ~ 1e7 would store inf and decode NaN."""
    w = torch.full((2, 32), 1e7)
    fp16 = qb.Scheme(8, granularity=qb.PerGroup(32), scale_dtype="float16")
    with pytest.raises(qb.NumericsError, match="scale_dtype='float16'"):
        qb.quantize_tensor(w, fp16)
    wide = qb.quantize_tensor(w, qb.Scheme(8, granularity=qb.PerGroup(32)))  # float32 scales
    torch.testing.assert_close(wide.dequantize(), w, rtol=1e-2, atol=0)
