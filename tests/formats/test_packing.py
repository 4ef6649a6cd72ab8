import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbalance.errors import UnsupportedError
from quantbalance.formats import packing


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip_is_exact(bits: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64).to(torch.uint8)
    packed = packing.pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (n * bits + 7) // 8
    assert torch.equal(packing.unpack(packed, bits, n), codes)


def test_documented_layouts() -> None:
    # 4-bit: element 2i in the low nibble of byte i.
    assert packing.pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist() == [0x21, 0x03]
    # 3-bit little-endian stream: 5 = 101, 6 = 110 -> bits 1,0,1,0,1,1 -> 0b110101 = 53.
    assert packing.pack(torch.tensor([5, 6], dtype=torch.uint8), 3).tolist() == [53]
    # 1-bit: LSB first.
    assert packing.pack(torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1]), 1).tolist() == [0x81, 0x01]


def test_unpack_rejects_wrong_size() -> None:
    try:
        packing.unpack(torch.zeros(3, dtype=torch.uint8), 4, 10)
    except UnsupportedError as e:
        assert "need 5" in str(e)
    else:
        raise AssertionError("expected UnsupportedError")
