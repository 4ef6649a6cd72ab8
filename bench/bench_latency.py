"""Deployed latency, file size and task metrics on `minilm` (batch 1 and 32 × 128) or `fashion`.

Usage: OMP_WAIT_POLICY=PASSIVE python bench/bench_latency.py [--task minilm|fashion] [--rounds 5]
       [--threads 2] [--engines float,bf16,...] [--presets w8a8,int8-weight,w4-g128] [--out PATH]
       [--n-test 10000]

A thin wrapper over `quantbalance.bench.benchmark` (the same run as `quantbalance bench --task`):
every engine is built, scored with the task's evaluation (minilm: cosine to the float embeddings on
64 sentences; fashion: accuracy and agreement with float on 1,024 test images), then timed round by
round, interleaved, and the medians are reported. Engines: float torch, torch bf16 (eager and
compiled), torchao int8×int8 + compile (skipped, with the reason, when torchao is missing), ONNX
Runtime's own float / quantize_dynamic / quantize_static QDQ, and quantbalance's presets on its
torch engine and on ONNX Runtime. Writes the result as JSON (default
bench/results/latency-<task>.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from quantbalance.bench import benchmark as bm
from quantbalance.tasks import BENCH_TASKS, load, load_for_bench


def main() -> None:
    """Run the benchmark, write the JSON result, print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="minilm", choices=sorted(BENCH_TASKS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default=",".join(bm.DEFAULT_ENGINES))
    ap.add_argument("--presets", default=",".join(bm.DEFAULT_PRESETS))
    ap.add_argument("--batch", default=None, help="batch sizes, e.g. 1,32 (default: 1 and the "
                    "task's example batch)")  # fmt: skip
    ap.add_argument("--n-test", type=int, default=None,
                    help="fashion: accuracy on this many test images (default 1,024; 10000 = all)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/latency-TASK)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.n_test is not None and args.task != "fashion":
        ap.error("--n-test is for --task fashion")
    task = (load_for_bench(args.task) if args.n_test is None
            else load(args.task, **{**BENCH_TASKS[args.task], "n_test": args.n_test}))  # fmt: skip
    result = bm.benchmark(
        task,
        engines=args.engines.split(","),
        presets=args.presets.split(","),
        batch_sizes=[int(b) for b in args.batch.split(",")] if args.batch else None,
        rounds=args.rounds,
        threads=args.threads,
    )
    out = Path(args.out or f"bench/results/latency-{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=1))
    print(result.to_markdown())
    print(f"load average at end: {os.getloadavg()}; result written to {out}")


if __name__ == "__main__":
    main()
