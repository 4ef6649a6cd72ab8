"""The ONNX exporter on random small Sequential models: a checked file matching the simulation,
or a typed error naming the layer.

Each example builds a Sequential of Linear / 1x1 Conv1d layers with activations and norms between
them, quantizes it with a random preset, exports it, checks the file with ``onnx.checker`` and
runs it in ONNX Runtime on a batch of another size. It draws as many examples as the other
entry points (500 in the ``ci`` profile, see conftest.py); ``QB_ONNX_EXAMPLES=N`` overrides the
count for this test alone. An export costs ~0.7 s of CPU once the exporter's operator registry is
cached for the process (:mod:`quantbalance.deploy.onnx_registry`), so 500 take ~6 minutes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import quantbalance as qb

pytest.importorskip("onnxruntime")
from quantbalance.deploy import session

ACTS = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU, "leaky": lambda: nn.LeakyReLU(0.1), "identity": nn.Identity,
    "dropout": lambda: nn.Dropout(0.3),
}  # fmt: skip
PRESETS = ["int8-weight", "w8a8", "w8a8-dynamic", "w4-g128", "w4a8", "nf4", "w3-g128"]


@st.composite
def models(draw: st.DrawFn) -> tuple[nn.Module, str, int]:
    conv = draw(st.booleans())
    width = [draw(st.integers(2, 40))]
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 40))
        layers.append(nn.Conv1d(width[-1], out, 1) if conv else nn.Linear(width[-1], out))
        width.append(out)
        act = draw(st.sampled_from([*sorted(ACTS), "layernorm"]))
        if act == "layernorm" and not conv:
            layers.append(nn.LayerNorm(out))
        elif act != "layernorm":
            layers.append(ACTS[act]())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return nn.Sequential(*layers).eval(), draw(st.sampled_from(PRESETS)), width[0]


def batch(n: int, features: int, conv: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, features, 5) if conv else (n, features)
    return torch.randn(*shape, generator=g)


@settings(
    max_examples=int(os.environ.get("QB_ONNX_EXAMPLES", settings().max_examples)), print_blob=True
)
@given(models())
def test_random_sequentials_export_and_match_or_name_the_layer(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[nn.Module, str, int]
) -> None:
    model, preset, features = case
    conv = isinstance(model[0], nn.Conv1d)
    calib = [batch(8, features, conv, s) for s in (1, 2)]
    q = qb.quantize(model, preset, calib, progress=False)
    path = Path(tmp_path_factory.getbasetemp()) / "random.onnx"
    try:
        qb.export_onnx(q, calib[0], path)
    except qb.QuantBalanceError as e:
        names = [n for n, _ in q.named_modules() if n]
        assert any(f"'{n}'" in str(e) or f"layer {n}" in str(e) for n in names), str(e)
        return
    onnx.checker.check_model(onnx.load(path), full_check=True)
    run = session(path, intra_op_threads=1)
    x = batch(3, features, conv, 7)  # another batch size: the batch dimension is dynamic
    with torch.no_grad():
        want = q(x)
    got: Any = run(x)
    assert got.shape == want.shape
    scale = float(want.abs().max()) + 1e-6
    # ORT's integer kernels round like the simulation; a few codes may land one step apart
    assert float((got - want).abs().max()) <= 0.02 * scale, preset
