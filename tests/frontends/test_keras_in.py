"""Keras in: a small Keras CNN trained here on sklearn's 8x8 digits, quantized end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from makers import digits, keras_cnn

import quantbalance as qb
from quantbalance.errors import AssetMissingError
from quantbalance.frontends.keras_in import from_keras

needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None or importlib.util.find_spec("onnx2torch") is None,
    reason="needs the keras extra (pip install 'quantbalance[keras]') and onnx2torch",
)


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return 100.0 * float((pred == y).mean())


@needs_keras
def test_keras_cnn_quantized_end_to_end(tmp_path: Path) -> None:
    x_train, x_test, y_train, y_test = digits()
    kmodel = keras_cnn(x_train, y_train)
    net = qb.from_keras(kmodel)
    with torch.no_grad():
        got = net(torch.from_numpy(x_test)).numpy()
    np.testing.assert_allclose(got, np.asarray(kmodel.predict(x_test, verbose=0)), atol=1e-5)
    float_acc = accuracy(net, x_test, y_test)
    assert float_acc > 85.0  # trained: the comparison below means something

    # The seeds' call: one bit width per weight layer, with per-layer results.
    q = qb.quantize(net, bitwidths=[8, 8, 8, 8, 8], progress=False)
    assert len(q.qb_info.layers) == 5 and not q.qb_info.unsupported
    batches = [torch.from_numpy(x_test[:64])]
    cmp = qb.compare(net, q, lambda m: {"accuracy": accuracy(m, x_test, y_test)}, batches)
    assert len(cmp.layer_sqnr) == 5 and min(cmp.layer_sqnr.values()) > 25.0
    assert cmp.quant_bytes < 0.3 * cmp.float_bytes

    calib = [torch.from_numpy(x_train[i : i + 64]) for i in range(0, 512, 64)]
    w8a8 = qb.quantize(net, "w8a8", calib_data=calib, progress=False)
    assert abs(accuracy(w8a8, x_test, y_test) - float_acc) <= 0.5

    path = tmp_path / "cnn.keras"
    kmodel.save(path)
    again = from_keras(path)
    with torch.no_grad():
        torch.testing.assert_close(again(torch.from_numpy(x_test[:8])), torch.from_numpy(got[:8]))


def test_missing_keras_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setitem(sys.modules, "keras", None)  # as if not installed
    with pytest.raises(AssetMissingError, match=r"pip install 'quantbalance\[keras\]'"):
        from_keras("model.keras")
