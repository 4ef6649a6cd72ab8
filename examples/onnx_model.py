"""Your ONNX file + sample inputs -> quantized, searched, and written back as ONNX QDQ.

    python examples/onnx_model.py --onnx model.onnx --data inputs.npy --max-drop 1%

`inputs.npy` holds sample inputs along its first axis (e.g. (N, 3, 224, 224) float32); a
`.safetensors` file with one tensor per model input works too. The graph is converted to torch
(onnx2torch), the budget protects top-1 agreement with the float model on held-out samples, and
the chosen Plan is exported as an ONNX QDQ model ONNX Runtime runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import quantbalance as qb
from quantbalance.search.holdout import split_eval


def main(argv: list[str] | None = None) -> tuple[qb.SearchResult, Path]:
    """Search under the budget, quantize with the chosen Plan, export it.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        ``(search result, path of the quantized ONNX file)``.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--data", required=True, help=".npy or .safetensors sample inputs")
    ap.add_argument("--max-drop", type=float, default=1.0, help="percent")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("out/onnx"))
    ap.add_argument("--cache-dir", default="default", help="measurement cache folder")
    args = ap.parse_args(argv)

    net = qb.from_onnx(args.onnx)  # an unconvertible op raises UnsupportedOpError naming it
    task = qb.tasks.from_model(net, args.data, batch_size=args.batch_size)
    half = task.n_eval_samples // 2
    split = split_eval(task, half, task.n_eval_samples - half)
    budget = qb.Budget(max_drop=args.max_drop / 100, relative=True)
    res = qb.search(net, split.search, budget, holdout=split.holdout, cache_dir=args.cache_dir)
    print(res.message)
    qmodel = qb.quantize(net, res.plan, calib_data=task.calib_data)
    path = qb.export_onnx(qmodel, task.example_inputs, args.out / "model-quantized.onnx")
    print(f"quantized ONNX written to {path}")
    return res, path


if __name__ == "__main__":
    main()
