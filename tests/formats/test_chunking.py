"""Large tensors are quantized and dequantized in pieces of whole blocks: same bits as whole."""

import pytest
import torch

import quantbalance as qb
from quantbalance.calibration import make_observer
from quantbalance.formats import granularity
from quantbalance.formats.granularity import chunk_slices

SCHEMES = [
    qb.Scheme(4, symmetric=False, granularity=qb.PerGroup(size=128)),  # partial groups (576)
    qb.Scheme(3, symmetric=False, granularity=qb.PerGroup(size=64, axis=0)),
    qb.Scheme(8, granularity=qb.PerChannel(axis=0)),
    qb.Scheme(8, granularity=qb.PerChannel(axis=1)),
    qb.Scheme(8, symmetric=False, granularity=qb.PerToken()),
    qb.Scheme(8, granularity=qb.PerTensor()),
    qb.Scheme(1, granularity=qb.PerGroup(size=32)),
    qb.Scheme(4, kind="nf4", granularity=qb.PerGroup(size=64)),
    qb.Scheme(8, kind="fp8_e4m3", granularity=qb.PerChannel(axis=0)),
    qb.Scheme(3, kind="codebook", granularity=qb.PerChannel(axis=0)),
]


def _assert_same(a: qb.QuantizedTensor, b: qb.QuantizedTensor) -> None:
    assert torch.equal(a.packed, b.packed)
    for name in ("scale", "zero_point", "codebook"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_chunked_quantize_and_dequantize_equal_unchunked(
    scheme: qb.Scheme, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(96, 576, generator=torch.Generator().manual_seed(0))
    whole = qb.quantize_tensor(x, scheme)
    ref = whole.dequantize()
    limit = 5000  # far below the 55,296 elements: many pieces
    monkeypatch.setattr(granularity, "CHUNK_ELEMENTS", limit)
    chunked = qb.quantize_tensor(x, scheme)
    _assert_same(whole, chunked)
    assert torch.equal(chunked.dequantize(), ref)
    assert torch.equal(whole.dequantize(), ref)  # chunked dequantize of the unchunked tensor


def test_chunked_with_observer_and_half_input(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)).half()
    scheme = qb.Scheme(4, symmetric=False, granularity=qb.PerGroup(size=128))
    whole = qb.quantize_tensor(x, scheme, make_observer("mse", scheme.granularity))
    monkeypatch.setattr(granularity, "CHUNK_ELEMENTS", 1000)
    chunked = qb.quantize_tensor(x, scheme, make_observer("mse", scheme.granularity))
    _assert_same(whole, chunked)
    assert chunked.dequantize().dtype == torch.float16


def test_chunk_slices_hold_whole_blocks_and_respect_the_limit() -> None:
    assert chunk_slices((8, 576), qb.PerGroup(size=128), limit=10_000) is None  # fits
    assert chunk_slices((10**6,), qb.PerTensor(), limit=10) is None  # no axis to slice
    axis, slices = chunk_slices((100, 30), qb.PerChannel(axis=1), limit=250)  # type: ignore[misc]
    assert axis == 1 and all(s.stop - s.start <= 2 for s in slices)
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(30))
    axis, slices = chunk_slices((64, 10), qb.PerGroup(size=16, axis=0), limit=200)  # type: ignore[misc]
    assert axis == 1 and slices[0] == slice(0, 3)
    axis, slices = chunk_slices((4, 1000), qb.PerToken(), limit=10)  # type: ignore[misc]
    assert axis == 0 and len(slices) == 4  # at least one row per piece
