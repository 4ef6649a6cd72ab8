import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quantbalance as qb
from quantbalance.errors import ConfigError
from quantbalance.formats.granularity import expand_params, from_blocks, grid_shape, to_blocks

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


@st.composite
def shape_and_gran(draw):  # type: ignore[no-untyped-def]
    shape = draw(shapes)
    nd = len(shape)
    kind = draw(st.sampled_from(["tensor", "channel", "token", "group"]))
    if kind == "tensor":
        return shape, qb.PerTensor()
    if kind == "channel":
        return shape, qb.PerChannel(axis=draw(st.integers(-nd, nd - 1)))
    if kind == "token":
        return shape, qb.PerToken()
    return shape, qb.PerGroup(size=draw(st.integers(1, 12)), axis=draw(st.integers(-nd, nd - 1)))


@settings(max_examples=80, deadline=None)
@given(sg=shape_and_gran())
def test_block_view_round_trip(sg) -> None:  # type: ignore[no-untyped-def]
    shape, gran = sg
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    blocks, mask = to_blocks(x, gran)
    assert blocks.shape[0] == torch.Size(grid_shape(shape, gran)).numel()
    assert torch.equal(from_blocks(blocks, shape, gran), x)
    real = blocks if mask is None else blocks[mask]
    assert real.numel() == x.numel()


def test_partial_group_has_its_own_scale() -> None:
    # SmolLM2: hidden 576 in groups of 128 -> 4 full groups and one of 64 per row.
    assert grid_shape((8, 576), qb.PerGroup(size=128)) == (8, 5)
    x = torch.ones(2, 576)
    x[:, 512:] = 10.0  # only the partial group is large
    qt = qb.quantize_tensor(x, qb.Scheme(8, granularity=qb.PerGroup(size=128)))
    assert qt.scale.shape == (2, 5)
    assert torch.allclose(qt.scale[:, :4], torch.full((2, 4), 1 / 127.5))
    assert torch.allclose(qt.scale[:, 4], torch.full((2,), 10 / 127.5))
    assert torch.allclose(qt.dequantize(), x, atol=10 / 255)


def test_expand_params_broadcasts_each_block() -> None:
    p = torch.tensor([[1.0, 2.0]])
    full = expand_params(p, (1, 5), qb.PerGroup(size=3))
    assert full.tolist() == [[1.0, 1.0, 1.0, 2.0, 2.0]]


def test_bad_axis() -> None:
    with pytest.raises(ConfigError, match="axis=3"):
        grid_shape((4, 4), qb.PerChannel(axis=3))
