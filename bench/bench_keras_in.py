"""Keras in: a small Keras CNN trained on sklearn's 8x8 digits, quantized through ONNX in.

Usage: OMP_WAIT_POLICY=PASSIVE python bench/bench_keras_in.py [--epochs 4]

The same model and split as tests/frontends/test_keras_in.py (75/25 stratified split, seed 0,
three Conv2D + two Dense layers, Adam 5e-3, batch 64). Prints the test accuracy (450 images) of
the Keras model, its torch conversion, `bitwidths=[8] * 5` (weights only), `w8a8` (calibrated on
512 training images) and `w4a8`, and the exact bytes of each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import quantbalance as qb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "frontends"))
from makers import digits, keras_cnn  # the test's model and data


def main() -> None:
    """Train, convert, quantize, print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    x_train, x_test, y_train, y_test = digits()
    kmodel = keras_cnn(x_train, y_train)
    net = qb.from_keras(kmodel)
    xt = torch.from_numpy(x_test)

    def acc(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((m(xt).argmax(1).numpy() == y_test).mean())

    keras_acc = 100.0 * float(
        (np.asarray(kmodel.predict(x_test, verbose=0)).argmax(1) == y_test).mean()
    )
    calib = [torch.from_numpy(x_train[i : i + 64]) for i in range(0, 512, 64)]
    rows = {
        "keras float": (keras_acc, None),
        "torch (ONNX in) float": (acc(net), qb.model_nbytes(net)),
    }
    q = qb.quantize(net, bitwidths=[8] * 5, progress=False)
    rows["bitwidths=[8]*5"] = (acc(q), qb.model_nbytes(q))
    for preset in ("w8a8", "w4a8"):
        q = qb.quantize(net, preset, calib_data=calib, progress=False)
        rows[preset] = (acc(q), qb.model_nbytes(q))
    print("| model | test accuracy (%) | bytes |\n|---|---|---|")
    for k, (a, b) in rows.items():
        print(f"| {k} | {a:.2f} | {b if b is not None else '-'} |")


if __name__ == "__main__":
    main()
