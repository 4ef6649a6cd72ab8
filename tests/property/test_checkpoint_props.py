"""The checkpoint loader on mutated files: a typed error, or exactly the saved model.

One small quantized model (int8, int4 in groups, W8A8 layers) is saved with ``qb.save``; every
example mutates the file (truncation, bit flips, appended bytes, or header edits: a tensor
removed, duplicated or renamed, its dtype, shape or offsets changed, metadata edited) and loads
it with ``qb.load``. Only the public save/load API is used, so the test holds for any checkpoint
layout that keeps the safetensors container.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import quantbalance as qb


def skeleton() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(),
                         nn.Linear(32, 4)).eval()  # fmt: skip


X = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, torch.Tensor, Path]:
    plan = qb.Plan(layers={"0": qb.preset("int8-weight").layers["re:.*"],
                           "2": qb.preset("w4-g128").layers["re:.*"],
                           "4": qb.preset("w8a8").layers["re:.*"]})  # fmt: skip
    q = qb.quantize(skeleton(), plan, [torch.randn(8, 16)], progress=False)
    folder = tmp_path_factory.mktemp("ckpt")
    path = qb.save(q, folder / "q.safetensors")
    with torch.no_grad():
        out = q(X)
    assert torch.equal(qb.load(path, skeleton())(X), out)
    return path.read_bytes(), out, folder / "mutated.safetensors"


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


DTYPES = ["F32", "F16", "BF16", "I8", "U8", "I32", "I64", "F64", "BOOL", "X9"]


@st.composite
def header_edit(draw: st.DrawFn, blob: bytes) -> bytes:
    header, data = split(blob)
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    op = draw(st.sampled_from(["remove", "duplicate", "rename", "swap", "dtype", "shape",
                               "offsets", "meta_remove", "meta_edit", "meta_add"]))  # fmt: skip
    meta = header.setdefault("__metadata__", {})
    if op == "remove":
        del header[name]
    elif op == "duplicate":
        header[name + draw(st.sampled_from(["_copy", ".x", "0"]))] = dict(header[name])
    elif op == "rename":
        header[name + "_renamed"] = header.pop(name)
    elif op == "swap":
        other = draw(st.sampled_from(names))
        header[name], header[other] = header[other], header[name]
    elif op == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(DTYPES))
    elif op == "shape":
        header[name]["shape"] = draw(st.lists(st.integers(0, 70), max_size=3))
    elif op == "offsets":
        a = draw(st.integers(0, len(data) + 8))
        header[name]["data_offsets"] = [a, draw(st.integers(0, len(data) + 8))]
    elif op == "meta_remove" and meta:
        del meta[draw(st.sampled_from(sorted(meta)))]
    elif op == "meta_edit" and meta:
        key = draw(st.sampled_from(sorted(meta)))
        meta[key] = draw(
            st.sampled_from(["", "{}", "[]", "null", "1", "99", '{"a": 1}'])
            | st.text(max_size=20)
            | st.just(meta[key][: draw(st.integers(0, 50))])
        )
    else:
        meta[draw(st.text(max_size=8))] = draw(st.text(max_size=8))
    return join(header, data)


def mutations(blob: bytes) -> st.SearchStrategy[bytes]:
    n = len(blob)
    truncate = st.integers(0, n - 1).map(lambda k: blob[:k])
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1,
                     max_size=4).map(lambda fs: _flip(blob, fs))  # fmt: skip
    append = st.binary(min_size=1, max_size=16).map(lambda b: blob + b)
    return st.one_of(truncate, flips, append, header_edit(blob), header_edit(blob))


def _flip(blob: bytes, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(blob)
    for i, bit in flips:
        b[i] ^= 1 << bit
    return bytes(b)


@settings(print_blob=False)
@given(data=st.data())
def test_mutated_checkpoints_load_exactly_or_raise_a_checkpoint_error(
    saved: tuple[bytes, torch.Tensor, Path], data: st.DataObject
) -> None:
    blob, out, path = saved
    mutated = data.draw(mutations(blob))
    path.write_bytes(mutated)
    try:
        model = qb.load(path, skeleton())
    except qb.QuantBalanceError as e:
        assert str(path) in str(e) or "checkpoint" in str(e).lower(), e
        return
    with torch.no_grad():  # loaded: it must be the saved model, bit for bit
        assert torch.equal(model(X), out)


def test_the_header_edits_are_real(saved: tuple[bytes, torch.Tensor, Path]) -> None:
    blob, _, path = saved
    header, data = split(blob)
    path.write_bytes(join(header, data))  # re-serialised but unchanged: still loads
    assert torch.equal(qb.load(path, skeleton())(X), saved[1])
    name = sorted(k for k in header if k != "__metadata__")[0]
    del header[name]
    path.write_bytes(join(header, data))
    with pytest.raises(qb.CheckpointError):
        qb.load(path, skeleton())


LAYERS = {
    "linear": lambda i, o: nn.Linear(i, o),
    "linear_nobias": lambda i, o: nn.Linear(i, o, bias=False),
    "relu": lambda i, o: nn.ReLU(),
    "gelu": lambda i, o: nn.GELU(),
    "conv": lambda i, o: nn.Conv1d(i, o, 1),
    "embedding": lambda i, o: nn.Embedding(i, o),
}


@settings(print_blob=False)
@given(
    st.lists(st.tuples(st.sampled_from(sorted(LAYERS)), st.sampled_from([4, 16, 32])), max_size=6)
)
def test_a_skeleton_that_does_not_match_is_refused(
    saved: tuple[bytes, torch.Tensor, Path], layers: list[tuple[str, int]]
) -> None:
    blob, out, path = saved
    path.write_bytes(blob)
    width = [16] + [o for _, o in layers]
    model = nn.Sequential(*[LAYERS[k](width[i], width[i + 1]) for i, (k, _) in enumerate(layers)])
    try:
        loaded = qb.load(path, model.eval())
    except qb.QuantBalanceError as e:
        assert str(e)
        return
    with torch.no_grad():  # only the saved architecture itself may load
        assert torch.equal(loaded(X), out)
