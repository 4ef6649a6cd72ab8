"""Packed checkpoints: round trips, exact byte accounting, ties, corruption, skeleton checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from torch import nn

import quantbalance as qb
from quantbalance.deploy import load, save
from quantbalance.deploy.checkpoint_file import canonical
from quantbalance.errors import CheckpointError
from quantbalance.nn import QuantModule


class ConvNet(nn.Module):
    """Conv-BN-ReLU, depthwise conv, Linear head (BN gets folded by quantize)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        return self.head(torch.relu(self.dw(x)).mean(dim=(2, 3)))


class TiedLM(nn.Module):
    """Embedding shared with the output projection (weight tying), plus an MLP and a Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.mlp = nn.Linear(16, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mlp(self.emb(idx)))  # (B, T, C)
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h)


def conv_net() -> ConvNet:
    torch.manual_seed(0)
    m = ConvNet()
    m.bn.running_mean.uniform_(-0.2, 0.2)
    m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def images(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 1, 10, 10, generator=g) for _ in range(n)]


def tokens() -> torch.Tensor:
    return torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(2))


def tied_lm() -> TiedLM:
    torch.manual_seed(0)
    return TiedLM().eval()


@pytest.fixture()
def w8a8_cnn() -> tuple[ConvNet, nn.Module]:
    m = conv_net()
    return m, qb.quantize(m, "w8a8", calib_data=images(), progress=False)


def header_len(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_roundtrip_is_bit_identical_and_skeleton_untouched(tmp_path, w8a8_cnn) -> None:
    m, q = w8a8_cnn
    before = {k: v.clone() for k, v in m.state_dict().items()}
    path = save(q, tmp_path / "q.safetensors")
    r = load(path, m)
    x = images(1)[0]
    assert torch.equal(r(x), q(x))
    assert r.qb_plan == q.qb_plan
    assert r.qb_info.folded == q.qb_info.folded == [("stem", "bn")]
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert isinstance(m.stem, nn.Conv2d) and isinstance(m.bn, nn.BatchNorm2d)
    assert not r.head.input_quantizer.observing


@pytest.mark.parametrize("preset", ["int8-weight", "w4-g128", "w8a8-dynamic"])
def test_roundtrip_presets_with_embeddings(tmp_path, preset: str) -> None:
    m = tied_lm()
    q = qb.quantize(m, preset, progress=False)
    r = load(save(q, tmp_path / "q.safetensors"), m)
    x = tokens()
    assert torch.equal(r(x), q(x))
    for name, mod in q.named_modules():
        if isinstance(mod, QuantModule):
            got = r.get_submodule(name).qweight
            assert torch.equal(got.packed, mod.qweight.packed) and got.scheme == mod.qweight.scheme


def test_file_size_is_exact(tmp_path, w8a8_cnn) -> None:
    _, q = w8a8_cnn
    path = save(q, tmp_path / "q.safetensors")
    quantized = sum(m.qweight.nbytes for m in q.modules() if isinstance(m, QuantModule))
    state = q.state_dict()  # the quantized weights are module state: qweight_* buffers
    rest = sum(t.numel() * t.element_size() for k, t in state.items() if ".qweight_" not in k)
    data = path.stat().st_size - 8 - header_len(path)
    assert data == quantized + rest == qb.model_nbytes(q)
    assert sum(t.numel() * t.element_size() for t in state.values()) == data
    # int8 codes: one byte per weight (7 bits where int8 kernels saturate: hardware="avx2");
    # the stored scales are float32 per output channel
    bits = q.head.qweight.scheme.bits
    assert quantized == sum(-(-n * bits // 8) for n in (8 * 9, 8 * 9, 4 * 8)) + 4 * (8 + 8 + 4)


def test_tied_float_weights_are_stored_once_and_retied(tmp_path) -> None:
    m = tied_lm()
    q = qb.quantize(m, qb.Plan(layers={"mlp": qb.LayerSpec(weight=qb.Scheme(8))}), progress=False)
    assert q.head.weight is q.emb.weight
    path = save(q, tmp_path / "q.safetensors")
    keys = st_load(path.read_bytes()).keys()
    assert ("emb.weight" in keys) != ("head.weight" in keys)
    r = load(path, m)
    assert r.head.weight is r.emb.weight
    assert torch.equal(r(tokens()), q(tokens()))


def test_tied_quantized_weights_are_stored_once(tmp_path) -> None:
    m = tied_lm()
    q = qb.quantize(m, "int8-weight", progress=False)
    path = save(q, tmp_path / "q.safetensors")
    keys = set(st_load(path.read_bytes()))
    assert {"emb.qweight_packed", "head.qweight_packed"} & keys == {"emb.qweight_packed"}
    untied = sum(x.qweight.nbytes for x in q.modules() if isinstance(x, QuantModule))
    assert path.stat().st_size - 8 - header_len(path) < qb.model_nbytes(q)
    assert qb.model_nbytes(q) - untied > 0
    r = load(path, m)
    assert r.head.qweight_packed is r.emb.qweight_packed
    assert r.head.qweight_scale is r.emb.qweight_scale
    assert qb.model_nbytes(r) == path.stat().st_size - 8 - header_len(path)
    assert torch.equal(r(tokens()), q(tokens()))


def test_altered_or_truncated_file_is_rejected_and_left_alone(tmp_path, w8a8_cnn) -> None:
    m, q = w8a8_cnn
    path = save(q, tmp_path / "q.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # one bit in the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load(path, m)
    assert path.read_bytes() == bytes(raw)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CheckpointError, match=r"truncated|corrupt"):
        load(path, m)
    assert path.stat().st_size == len(raw) // 2
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="truncated"):
        load(path, m)


def test_future_format_and_foreign_file(tmp_path, w8a8_cnn) -> None:
    m, q = w8a8_cnn
    path = save(q, tmp_path / "q.safetensors")
    n = header_len(path)
    meta = json.loads(path.read_bytes()[8 : 8 + n])["__metadata__"]
    future = tmp_path / "future.safetensors"
    future.write_bytes(st_save(st_load(path.read_bytes()), {**meta, "quantbalance.format": "99"}))
    with pytest.raises(CheckpointError, match=r"format 99 .* newer"):
        load(future, m)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(3)}, foreign, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="without quantbalance metadata"):
        load(foreign, m)


def test_skeleton_mismatch_names_the_layer(tmp_path, w8a8_cnn) -> None:
    q = w8a8_cnn[1]
    path = save(q, tmp_path / "q.safetensors")
    wide = conv_net()
    wide.head = nn.Linear(8, 5)
    with pytest.raises(CheckpointError, match=r"'head'.*\(5, 8\).*\(4, 8\)"):
        load(path, wide)
    with pytest.raises(CheckpointError, match=r"folded BatchNorm pairs \[\('stem', 'bn'\)\]"):
        load(path, nn.Sequential(nn.Linear(8, 4)))
    lm = tied_lm()
    lm_path = save(qb.quantize(lm, "int8-weight", progress=False), tmp_path / "lm.safetensors")
    del lm.conv
    with pytest.raises(CheckpointError, match="'conv' does not exist"):
        load(lm_path, lm)
    wrong_type = conv_net()
    wrong_type.head = nn.Conv1d(8, 4, 1)
    with pytest.raises(CheckpointError, match="'head' is a Conv1d"):
        load(path, wrong_type)


def test_failed_save_keeps_previous_file(tmp_path, w8a8_cnn, monkeypatch) -> None:
    _, q = w8a8_cnn
    path = save(q, tmp_path / "q.safetensors")
    good = path.read_bytes()

    def half_then_fail(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save(q, path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]


def test_load_takes_a_skeleton_module_or_callable(tmp_path, w8a8_cnn) -> None:
    m, q = w8a8_cnn
    p = save(q, tmp_path / "q.safetensors", source="tinycnn")
    x = images(1)[0]
    assert torch.equal(load(p, lambda: m)(x), q(x))
    assert torch.equal(load(p, m)(x), q(x))
    with pytest.raises(
        CheckpointError, match=r"no float skeleton given \(it was saved from 'tinycnn'"
    ):
        load(p)
    with pytest.raises(CheckpointError, match=r"returned int, not an nn\.Module"):
        load(p, lambda: 3)


def test_uncalibrated_static_quantizer_is_refused(tmp_path, w8a8_cnn) -> None:
    _, q = w8a8_cnn
    q.head.input_quantizer.observing = True
    with pytest.raises(CheckpointError, match=r"'head'.*still calibrating"):
        save(q, tmp_path / "q.safetensors")


def test_saving_twice_writes_the_same_bytes(tmp_path, w8a8_cnn) -> None:
    """safetensors keeps metadata in a hash map: the header is made canonical on save."""
    _, qmodel = w8a8_cnn
    a = save(qmodel, tmp_path / "a.qb").read_bytes()
    for i in range(3):
        assert save(qmodel, tmp_path / f"b{i}.qb").read_bytes() == a
    (n,) = struct.unpack("<Q", a[:8])
    header = json.loads(a[8 : 8 + n])
    keys = list(header["__metadata__"])
    assert keys == sorted(keys) and next(iter(header)) == "__metadata__"
    blob = st_save({"x": torch.arange(6.0)}, metadata={"b": "2", "a": "1"})
    assert st_load(canonical(blob))["x"].equal(torch.arange(6.0))
    assert len(canonical(blob)) == len(blob)
