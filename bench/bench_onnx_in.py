"""ONNX in -> quantized ONNX out on the `fashion` CNN, against quantizing the torch model directly.

Usage: OMP_WAIT_POLICY=PASSIVE python bench/bench_onnx_in.py [--n-test 10000] [--preset w8a8]
       [--out bench/results/onnx-in-fashion.json]

The float FashionNet is exported to ONNX (TorchScript exporter, opset 17), read back with
`qb.from_onnx`, quantized with the same preset and the same calibration batches as the torch
model, exported to ONNX QDQ and run by ONNX Runtime. Prints and writes the accuracies (percent on
the Fashion-MNIST test images; needs the Debian package dataset-fashion-mnist): float torch,
float ONNX-in, quantized torch path, quantized ONNX-in (simulated), quantized ONNX-in QDQ on
ONNX Runtime, and the largest float output difference of the round trip.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

import quantbalance as qb
from quantbalance.bench.benchmark import RunnerModule


def main() -> None:
    """Run the comparison, print the table, write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--preset", default="w8a8")
    ap.add_argument("--out", type=Path, default=Path("bench/results/onnx-in-fashion.json"))
    args = ap.parse_args()

    task = qb.tasks.load("fashion", n_test=args.n_test)
    x = task.example_inputs if isinstance(task.example_inputs, torch.Tensor) else task.calib_data[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fashion.onnx"
        torch.onnx.export(task.model, (x,), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                          opset_version=17)  # fmt: skip
        net = qb.from_onnx(path)
        with torch.no_grad():  # largest output difference, and the largest output it is on
            diff = float(max((net(b) - task.model(b)).abs().max() for b in task.calib_data))
            scale = float(max(task.model(b).abs().max() for b in task.calib_data))
        q_torch = qb.quantize(task.model, args.preset, task.calib_data, progress=False)
        q_onnx = qb.quantize(net, args.preset, task.calib_data, progress=False)
        qdq = qb.export_onnx(q_onnx, x, Path(tmp) / "fashion-q.onnx")
        sess = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        runner = RunnerModule(lambda b: torch.from_numpy(sess.run(None, {name: b.numpy()})[0]))
        acc = {
            "float torch": task.reference["accuracy"],
            "float onnx-in": task.evaluate(net)["accuracy"],
            f"{args.preset} torch path": task.evaluate(q_torch)["accuracy"],
            f"{args.preset} onnx-in (simulated)": task.evaluate(q_onnx)["accuracy"],
            f"{args.preset} onnx-in QDQ on ORT": task.evaluate(runner)["accuracy"],
        }
        result = {"n_test": args.n_test, "preset": args.preset, "round_trip_max_abs": diff,
                  "max_abs_logit": scale, "accuracy": acc,
                  "qdq_bytes": qdq.stat().st_size}  # fmt: skip
    print("| model | accuracy (%) |\n|---|---|")
    for k, v in acc.items():
        print(f"| {k} | {v:.2f} |")
    print(f"round trip: max |ONNX-in - torch| = {diff:.2e} (largest |logit| {scale:.1f})")
    print(f"QDQ file: {result['qdq_bytes']} bytes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
