"""Format kinds as objects (formats/kinds.py): byte cost, codes, the fp4_e2m1 kind end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.errors import ConfigError
from quantbalance.formats.granularity import grid_shape
from quantbalance.formats.kinds import FP4_MAGNITUDES, KINDS, get_kind, stored_nbytes

G32 = qb.PerGroup(size=32)
SCHEMES = [
    qb.Scheme(8),
    qb.Scheme(4, granularity=G32, symmetric=False, signed=False),
    qb.Scheme(1),
    qb.Scheme(4, kind="nf4", granularity=G32, scale_dtype="float16"),
    qb.Scheme(3, kind="codebook", granularity=qb.PerGroup(size=64)),
    qb.Scheme(8, kind="fp8_e4m3"),
    qb.Scheme(8, kind="fp8_e5m2", granularity=qb.PerTensor()),
    qb.Scheme(4, kind="fp4_e2m1", granularity=G32),
    qb.Scheme(4, kind="fp4_e2m1", granularity=qb.PerGroup(size=24), scale_dtype="bfloat16"),
]


def _weight(rows: int = 48, cols: int = 96) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_kind_byte_cost_is_exactly_what_quantize_tensor_stores(scheme: qb.Scheme) -> None:
    w = _weight()
    qt = qb.quantize_tensor(w, scheme)
    blocks = math.prod(grid_shape(tuple(w.shape), scheme.granularity))
    assert scheme.format_kind.nbytes(w.numel(), blocks, scheme) == qt.nbytes
    partial = _weight(5, 100)  # groups that do not divide the row: the last block is partial
    assert stored_nbytes((5, 100), scheme) == qb.quantize_tensor(partial, scheme).nbytes


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_every_kind_survives_parts_and_metadata(scheme: qb.Scheme) -> None:
    qt = qb.quantize_tensor(_weight(), scheme)
    back = qb.QuantizedTensor.from_parts(qt.parts(), qt.metadata())
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert back.nbytes == qt.nbytes


def test_unknown_kinds_and_fixed_widths_are_refused_naming_the_accepted() -> None:
    with pytest.raises(ConfigError, match="accepted: uniform, nf4, codebook"):
        qb.Scheme(4, kind="mxfp4")
    with pytest.raises(ConfigError, match="kind='fp4_e2m1' needs bits=4"):
        qb.Scheme(8, kind="fp4_e2m1")
    with pytest.raises(ConfigError, match="unknown kind"):
        get_kind("int4")
    assert set(KINDS) == {"uniform", "nf4", "codebook", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1"}


def test_fp4_codes_follow_the_e2m1_layout() -> None:
    kind = get_kind("fp4_e2m1")
    scheme = qb.Scheme(4, kind="fp4_e2m1")
    x = torch.tensor([[0.0, 0.5, 6.0, -6.0, -0.5, 2.9, 3.1, 0.2, 0.3, -0.24, 7.0, 5.0]])
    codes = kind.encode(x, torch.ones(1, 1), None, scheme)
    # 2.9 -> 3 (index 5), 3.1 -> 3, 0.2 -> 0, 0.3 -> 0.5, -0.24 -> 0 (code 0, no negative zero),
    # 7 -> clamps to 6, 5 is a tie between 4 and 6 -> the smaller magnitude
    assert codes.tolist() == [[0, 1, 7, 15, 9, 5, 5, 0, 1, 0, 7, 6]]
    values = kind.decode(codes, torch.full((1, 1), 2.0), None, scheme)
    assert values.tolist() == [[0.0, 1.0, 12.0, -12.0, -1.0, 6.0, 6.0, 0.0, 1.0, 0.0, 12.0, 8.0]]


def test_fp4_quantize_tensor_keeps_grid_values_exact_and_scale_per_block() -> None:
    scheme = qb.Scheme(4, kind="fp4_e2m1", granularity=qb.PerGroup(size=16))
    signs = torch.tensor([1.0, -1.0]).repeat(8)
    row = torch.cat([FP4_MAGNITUDES, FP4_MAGNITUDES]) * signs  # absmax 6 in every block
    w = torch.stack([row * 0.25, row * 3.0])  # block scales 0.25 and 3.0
    qt = qb.quantize_tensor(w, scheme)
    assert qt.scale is not None and qt.scale.flatten().tolist() == [0.25, 3.0]
    assert torch.equal(qt.dequantize(), w)
    assert qt.nbytes == 16 + 2 * 4  # 32 four-bit codes + two float32 scales
    noisy = _weight(8, 64)
    sim = qb.fake_quantize(noisy, scheme)
    assert torch.equal(sim, qb.quantize_tensor(noisy, scheme).dequantize())
    blocks = noisy.reshape(8, 4, 16)
    err = (sim.reshape(8, 4, 16) - blocks).abs() / blocks.abs().amax(-1, keepdim=True)
    assert float(err.max()) <= 1.0 / 6 + 1e-6  # half the widest step (4 -> 6), scale absmax/6


def test_fp4_model_is_simulated_packed_and_stored_in_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    spec = qb.LayerSpec(weight=qb.Scheme(4, kind="fp4_e2m1", granularity=G32))
    plan = qb.Plan(layers={"re:.*": spec})
    q = qb.quantize(net, plan, progress=False)
    x = torch.randn(4, 64)
    layer = q[0]
    assert layer.qweight.scheme.kind == "fp4_e2m1"
    assert layer.qweight.nbytes == 64 * 32 // 2 + 32 * 2 * 4
    path = qb.save(q, tmp_path / "fp4.safetensors")
    back = qb.load(path, net)
    assert torch.equal(back(x), q(x))
    assert torch.equal(back[0].qweight.packed, layer.qweight.packed)
