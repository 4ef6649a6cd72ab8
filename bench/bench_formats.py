"""Throughput of the formats primitives on a 4096x4096 float32 weight.

Usage: python bench/bench_formats.py [--out bench/results/formats.json] [--repeats 5]

GB/s counts the float32 input bytes (64 MiB) processed per second; medians over repeats,
schemes interleaved round by round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import quantbalance as qb

SCHEMES = {
    "int8-per-channel": qb.Scheme(8),
    "int4-g128": qb.Scheme(4, granularity=qb.PerGroup(size=128)),
    "int4-g128-asym": qb.Scheme(4, symmetric=False, granularity=qb.PerGroup(size=128)),
    "int3-g128": qb.Scheme(3, granularity=qb.PerGroup(size=128)),
    "nf4-g64": qb.Scheme(4, kind="nf4", granularity=qb.PerGroup(size=64)),
}


def main() -> None:
    """Run the benchmark and write one JSON row per scheme."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/formats.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    gb = w.numel() * 4 / 1e9
    times: dict[str, dict[str, list[float]]] = {k: {"q": [], "dq": []} for k in SCHEMES}
    qts = {}
    for _ in range(args.repeats):
        for name, scheme in SCHEMES.items():
            t0 = time.perf_counter()
            qt = qb.quantize_tensor(w, scheme)
            t1 = time.perf_counter()
            qt.dequantize()
            t2 = time.perf_counter()
            times[name]["q"].append(t1 - t0)
            times[name]["dq"].append(t2 - t1)
            qts[name] = qt
    rows = []
    for name, t in times.items():
        qt = qts[name]
        err = (w - qt.dequantize()).pow(2).sum()
        rows.append(
            {
                "scheme": name,
                "quantize_s": statistics.median(t["q"]),
                "dequantize_s": statistics.median(t["dq"]),
                "quantize_gb_s": gb / statistics.median(t["q"]),
                "dequantize_gb_s": gb / statistics.median(t["dq"]),
                "nbytes": qt.nbytes,
                "bits_per_weight": qt.bits_per_weight,
                "sqnr_db": float(10 * torch.log10(w.pow(2).sum() / err)),
                "threads": args.threads,
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "load": os.getloadavg()[0],
                "date": dt.date.today().isoformat(),
            }
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    hdr = "| scheme | quantize GB/s | dequantize GB/s | bytes | bits/weight | SQNR dB |"
    lines = [hdr, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['scheme']} | {r['quantize_gb_s']:.2f} | {r['dequantize_gb_s']:.2f} | "
            f"{r['nbytes']:,} | {r['bits_per_weight']:.3f} | {r['sqnr_db']:.2f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
