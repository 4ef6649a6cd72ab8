"""Quality and size of the presets on the real tasks (shared/BENCH_TASKS.md), beside float.

Usage:
    python bench/bench_tasks.py --task minilm --configs int8-weight,w8a8,w8a8-dynamic
    python bench/bench_tasks.py --task fashion --configs w8a8,w4a8
    python bench/bench_tasks.py --task smollm --configs w4-g128,w3-g128

Each run appends JSON rows to bench/results/tasks-<task>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch

import quantbalance as qb


def main() -> None:
    """Evaluate float and each config on one task; write rows; print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True, choices=qb.tasks.TASKS)
    ap.add_argument("--configs", default="int8-weight,w8a8,w8a8-dynamic")
    ap.add_argument("--algorithm", default=None)
    ap.add_argument("--extended", action="store_true", help="minilm: Lee Pearson + sentiment")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    task = qb.tasks.load(args.task)
    rows = []
    t0 = time.perf_counter()
    ref = task.reference
    float_s = time.perf_counter() - t0
    rows.append(_row(args.task, "float", ref, qb.model_nbytes(task.model), float_s))
    if args.extended and args.task == "minilm":
        from quantbalance.tasks.minilm import minilm_extended_metrics

        rows[-1]["metrics"] |= minilm_extended_metrics(task, task.model)
    for name in args.configs.split(","):
        t0 = time.perf_counter()
        q = qb.quantize(task.model, name, task.calib_data, algorithm=args.algorithm, progress=False)
        q_s = time.perf_counter() - t0
        metrics = task.evaluate(q)
        if args.extended and args.task == "minilm":
            from quantbalance.tasks.minilm import minilm_extended_metrics

            metrics |= minilm_extended_metrics(task, q)
        row = _row(args.task, name, metrics, qb.model_nbytes(q), time.perf_counter() - t0)
        row["quantize_s"] = q_s
        row["algorithm"] = args.algorithm or "rtn"
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out or f"bench/results/tasks-{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    keys = list(rows[0]["metrics"])
    lines = ["| config | " + " | ".join(keys) + " | bytes |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        vals = " | ".join(f"{r['metrics'].get(k, float('nan')):.4f}" for k in keys)
        lines.append(f"| {r['config']} | {vals} | {r['bytes']:,} |")
    print("\n".join(lines))


def _row(task: str, config: str, metrics: dict, nbytes: int, seconds: float) -> dict:
    return {
        "task": task,
        "config": config,
        "metrics": metrics,
        "bytes": nbytes,
        "seconds": seconds,
        "torch": torch.__version__,
        "quantbalance": qb.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "date": dt.date.today().isoformat(),
    }


if __name__ == "__main__":
    main()
