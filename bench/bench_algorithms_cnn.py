"""Accuracy-keeping algorithms beside round to nearest and float, on real tasks.

``fashion``: w8a8 / w4a8 round to nearest, w4a8 with ``cle``, ``adaround``, ``bias_correction``
alone and as ``cle+adaround+bias_correction``, and w4a4 (int4 per-channel weights, int4
per-tensor static activations) round to nearest vs QAT (LSQ, one epoch by default).
``minilm``: w8a8 round to nearest vs SmoothQuant (the plan step's per-group α search, with round
to nearest or GPTQ weights, and fixed α through ``smooth_model``).

Usage:
    HF_HUB_OFFLINE=1 python bench/bench_algorithms_cnn.py --task fashion   # or minilm, all

Each configuration appends a JSON row to ``bench/results/algorithms_<task>.json`` as it finishes.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import quantbalance as qb
from quantbalance.algorithms.smoothquant import smooth_model
from quantbalance.qat import qat

W4A4 = qb.Plan(
    name="w4a4",
    layers={
        "re:.*": qb.LayerSpec(
            weight=qb.Scheme(4),
            activation=qb.Scheme(4, symmetric=False, granularity=qb.PerTensor()),
        )
    },
)
FASHION = [  # (config, plan, algorithm)
    ("w8a8 rtn", "w8a8", "rtn"),
    ("w4a8 rtn", "w4a8", "rtn"),
    ("w4a8 cle", "w4a8", "cle"),
    ("w4a8 adaround", "w4a8", "adaround"),
    ("w4a8 bias_correction", "w4a8", "bias_correction"),
    ("w4a8 cle+adaround+bias_correction", "w4a8", "cle+adaround+bias_correction"),
    ("w4a4 rtn", W4A4, "rtn"),
]


class Recorder:
    """Times a configuration, evaluates it and appends its JSON row to the results file."""

    def __init__(self, task: qb.tasks.Task, out: Path, threads: int) -> None:
        self.task, self.out, self.threads = task, out, threads
        self.rows: list[dict[str, Any]] = []
        out.parent.mkdir(parents=True, exist_ok=True)

    def run(self, config: str, plan: Any, algorithm: str, build: Callable[[], nn.Module]) -> None:
        """Build the model with ``build``, evaluate it and write the row."""
        t0 = time.perf_counter()
        model = build()
        t1 = time.perf_counter()
        metrics = self.task.evaluate(model)
        row = {
            "task": self.task.name,
            "config": config,
            "plan": plan if isinstance(plan, str) else plan.name,
            "algorithm": algorithm,
            **metrics,
            "quantize_s": round(t1 - t0, 2),
            "eval_s": round(time.perf_counter() - t1, 2),
            "algorithm_log": _summary(getattr(model, "qb_info", None)),
            "threads": self.threads,
            "load": os.getloadavg()[0],
            "torch": torch.__version__,
            "quantbalance": qb.__version__,
            "machine": platform.processor() or platform.machine(),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
        }
        self.rows.append(row)
        self.out.write_text(json.dumps(self.rows, indent=1))
        shown = {k: round(v, 4) for k, v in metrics.items()}
        print(f"{config:40s} {shown} quantize {row['quantize_s']} s", flush=True)


def _summary(info: Any) -> dict[str, Any]:
    if info is None:
        return {}
    out: dict[str, Any] = {}
    for k, v in info.algorithm_log.items():
        if k == "qat":
            out[k] = v
        elif k == "smoothquant":
            out[k] = v["alpha"]
        elif k == "cle":
            out[k] = len(v["pairs"])
    return out


def bench_fashion(args: argparse.Namespace) -> None:
    """Float, round to nearest, CLE/AdaRound/bias correction and QAT on ``fashion``."""
    from quantbalance.tasks.fashion_data import load_fashion_mnist

    task = qb.tasks.load("fashion", n_test=args.n_test)
    rec = Recorder(task, Path(args.out_dir) / "algorithms_fashion.json", args.threads)
    rec.run("float", "float", "none", lambda: task.model)
    for config, plan, alg in FASHION:
        rec.run(config, plan, alg, lambda p=plan, a=alg: qb.quantize(
            task.model, p, task.calib_data, algorithm=a, progress=False))  # fmt: skip
    x, y = load_fashion_mnist("train")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train = list(zip(x[perm].split(64), y[perm].split(64), strict=True))
    rec.run(
        f"w4a4 qat ({args.qat_epochs} epoch, lr {args.qat_lr})",
        W4A4,
        "qat",
        lambda: qat(task.model, W4A4, train, nn.CrossEntropyLoss(), epochs=args.qat_epochs,
                    lr=args.qat_lr, calib_data=task.calib_data, progress=False),
    )  # fmt: skip


def bench_minilm(args: argparse.Namespace) -> None:
    """Float, w8a8 round to nearest and SmoothQuant on ``minilm``."""
    task = qb.tasks.load("minilm", n_eval=args.n_eval)
    rec = Recorder(task, Path(args.out_dir) / "algorithms_minilm.json", args.threads)
    rec.run("float", "float", "none", lambda: task.model)
    for alg in args.minilm_algorithms:
        rec.run(f"w8a8 {alg}", "w8a8", alg, lambda a=alg: qb.quantize(
            task.model, "w8a8", task.calib_data, algorithm=a, progress=False))  # fmt: skip

    def fixed(alpha: float) -> nn.Module:
        m = copy.deepcopy(task.model)
        smooth_model(m, task.calib_data, alpha)
        return qb.quantize(m, "w8a8", task.calib_data, progress=False)

    for alpha in args.alphas:
        rec.run(f"w8a8 smoothquant alpha={alpha}", "w8a8", "smoothquant", lambda a=alpha: fixed(a))


def main() -> None:
    """Parse arguments and run the chosen tasks."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["fashion", "minilm", "all"], default="all")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-test", type=int, default=None, help="fashion test images (all: 10000)")
    ap.add_argument("--n-eval", type=int, default=500, help="minilm evaluation sentences")
    ap.add_argument("--qat-epochs", type=float, default=1.0)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--alphas", type=float, nargs="*", default=[0.5, 0.75, 0.85])
    ap.add_argument(
        "--minilm-algorithms", nargs="*", default=["rtn", "smoothquant", "smoothquant+gptq"]
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.task in ("fashion", "all"):
        bench_fashion(args)
    if args.task in ("minilm", "all"):
        bench_minilm(args)


if __name__ == "__main__":
    main()
