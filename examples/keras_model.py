"""Your Keras 3 model -> quantized per layer, the seeds' way (`bitwidths=[...]`).

    pip install 'quantbalance[keras]'
    python examples/keras_model.py --keras cnn.keras --data images.npy --labels labels.npy

The model comes in through Keras's own ONNX export (torch backend: no TensorFlow), then the
ONNX path. Inputs stay in Keras's layout (NHWC images). Prints each layer's output SQNR and
the accuracy of the float and quantized models.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import quantbalance as qb


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Quantize with one bit width per weight layer, print per-layer SQNR and accuracy.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        ``{"float_accuracy", "quant_accuracy", "compression"}``.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keras", required=True, help="a .keras model file")
    ap.add_argument("--data", required=True, help=".npy inputs, first axis = samples")
    ap.add_argument("--labels", required=True, help=".npy integer labels")
    ap.add_argument("--bits", type=int, default=8, help="weight bits for every layer")
    args = ap.parse_args(argv)

    net = qb.from_keras(args.keras)
    x = torch.from_numpy(np.load(args.data, allow_pickle=False)).float()
    y = torch.from_numpy(np.load(args.labels, allow_pickle=False)).long()

    def accuracy(model: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"accuracy": 100 * float((model(x).argmax(1) == y).float().mean())}

    n_layers = len(qb.quantize(net, "int8-weight", progress=False).qb_info.layers)
    qmodel = qb.quantize(net, bitwidths=[args.bits] * n_layers)
    cmp = qb.compare(net, qmodel, accuracy, batches=[x[:64]])
    for name, db in cmp.layer_sqnr.items():
        print(f"  {name}: output SQNR {db:.1f} dB")
    print(
        f"accuracy {cmp.float_metrics['accuracy']:.2f} -> {cmp.quant_metrics['accuracy']:.2f} "
        f"%, {cmp.compression:.2f}x smaller"
    )
    return {
        "float_accuracy": cmp.float_metrics["accuracy"],
        "quant_accuracy": cmp.quant_metrics["accuracy"],
        "compression": cmp.compression,
    }


if __name__ == "__main__":
    main()
