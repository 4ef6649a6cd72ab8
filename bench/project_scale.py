"""Project the wall time and memory of searching Llama-3-8B/70B-shaped models on N workers.

Usage:
    python bench/project_scale.py [--measured bench/results/search-smollm.json] \
        [--worker-speed 1,100] [--workers 1,8,64] [--json OUT]

Inputs, measured on SmolLM2-135M (``bench/bench_search.py --tasks smollm``, the row's
``timings_first``; override with the flags): seconds per single-layer measurement, per Plan
evaluation (quantize + evaluate on the search split), and the serial phases (setup, cost table,
verification, held-out). Costs are scaled by the parameter count (a forward pass and a
round-to-nearest quantization are both linear in it, for the same evaluation tokens).

The model of one search on N workers (Amdahl, with the parts that cannot be spread):

    T(N) = setup + costs + ship(N) + V·plan + H·plan          (serial)
         + ceil(S / N)·sens + ceil(P / N)·plan                 (fanned out)

with S the measured (layer, candidate) pairs, P the front points and presets (independent Plan
evaluations), V the verification rounds (each depends on the previous), H the held-out
evaluations, and ship(N) = N × model bytes / head bandwidth (the model sent once per worker
from the driver's object store). ``--worker-speed`` scales a worker's forward speed relative to
this 2-core CPU (e.g. 100 for one data-center GPU; an assumption, not a measurement).

Memory: a worker holds the float model once (bf16) plus one layer's float32 copy and the
activations of the evaluation batch; the driver holds the model and its BatchNorm-folded copy.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped decoder: its quantizable layers and parameter count."""

    name: str
    blocks: int
    hidden: int
    intermediate: int
    kv: int
    vocab: int
    tied: bool = False

    @property
    def layers(self) -> int:
        """Quantizable layers: 7 Linear per block, the embedding and the LM head."""
        return 7 * self.blocks + (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """Parameter count (norms included)."""
        h, i, kv = self.hidden, self.intermediate, self.kv
        block = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        return self.blocks * block + self.vocab * h * (1 if self.tied else 2) + h

    @property
    def largest_layer(self) -> int:
        """Elements of the largest weight matrix."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)


SMOLLM = Shape("SmolLM2-135M", 30, 576, 1536, 192, 49152, tied=True)
TARGETS = [
    Shape("Llama-3-8B", 32, 4096, 14336, 1024, 128256),
    Shape("Llama-3-70B", 80, 8192, 28672, 1024, 128256),
]


@dataclass(frozen=True)
class Measured:
    """Per-evaluation costs and serial phases measured on the reference model (seconds)."""

    sens_s: float
    plan_s: float
    setup_s: float
    costs_s: float
    verify_evals: int
    holdout_evals: int
    parallel_plans: int
    candidates: int
    measured_fraction: float


def from_row(row: dict, ref: Shape) -> Measured:
    """Costs from a ``bench_search.py`` smollm row (``timings_first`` and counts).

    Args:
        row: the JSON row.
        ref: the reference model's shape.

    Returns:
        The measured inputs.
    """
    t = row["timings_first"]
    n_presets = len(row["presets"])
    front = 3
    # front + presets on the search split, presets also on the held-out split (one quantization)
    plan_s = t["front"] / (front + n_presets * 1.5)
    verify = max(1, row["evaluations"] - front - 2 * n_presets - 1)
    measured = 48
    return Measured(
        sens_s=t["sensitivity"] / measured,
        plan_s=plan_s,
        setup_s=t["setup"],
        costs_s=t["costs"],
        verify_evals=verify,
        holdout_evals=1,
        parallel_plans=front + n_presets,
        candidates=4,
        measured_fraction=measured / (ref.layers * 4),
    )


def project(m: Measured, ref: Shape, target: Shape, workers: int, speed: float,
            fraction: float, bandwidth: float) -> dict:  # fmt: skip
    """Projected wall time (hours) and memory (GiB) of one search.

    Args:
        m: measured costs on ``ref``.
        ref: the reference shape.
        target: the projected shape.
        workers: number of workers.
        speed: a worker's (and the driver's) forward speed relative to the measuring CPU.
        fraction: share of (layer, candidate) pairs measured for real (1: all).
        bandwidth: bytes/s from the driver to the workers.

    Returns:
        The row.
    """
    scale = target.params / ref.params / speed
    pairs = target.layers * m.candidates
    s = math.ceil(pairs * fraction)
    sens, plan = m.sens_s * scale, m.plan_s * scale
    model_bytes = 2 * target.params  # bf16
    ship = workers * model_bytes / bandwidth if workers > 1 else 0.0
    serial = (m.setup_s + m.costs_s) * scale + ship + (m.verify_evals + m.holdout_evals) * plan
    fanned = math.ceil(s / workers) * sens + math.ceil(m.parallel_plans / workers) * plan
    one = serial - ship + s * sens + m.parallel_plans * plan
    total = serial + fanned
    act = 4 * 4096 * target.hidden * 8  # fp32 activations of a 4k-token batch, ~8 live copies
    return {
        "model": target.name,
        "params_b": round(target.params / 1e9, 2),
        "workers": workers,
        "worker_speed": speed,
        "measured_pairs": s,
        "of_pairs": pairs,
        "hours": round(total / 3600, 2),
        "serial_hours": round(serial / 3600, 2),
        "ship_hours": round(ship / 3600, 2),
        "speedup": round(one / total, 2),
        "max_speedup": round(one / serial, 1),
        "worker_mem_gib": round((model_bytes + 4 * target.largest_layer + act) / GIB, 1),
        "driver_mem_gib": round(2 * model_bytes / GIB, 1),
    }


def main() -> None:
    """Print the projection table (and write JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measured", default="bench/results/search-smollm.json")
    ap.add_argument("--workers", default="1,8,64")
    ap.add_argument("--worker-speed", default="1,100")
    ap.add_argument("--fractions", default="1.0,0.06", help="share of pairs measured")
    ap.add_argument("--bandwidth-gbps", type=float, default=10.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    row = json.loads(Path(args.measured).read_text())[0]
    m = from_row(row, SMOLLM)
    bw = args.bandwidth_gbps * 1e9 / 8
    rows = [
        project(m, SMOLLM, t, w, sp, f, bw)
        for t in TARGETS
        for sp in (float(x) for x in args.worker_speed.split(","))
        for f in (float(x) for x in args.fractions.split(","))
        for w in (int(x) for x in args.workers.split(","))
    ]
    head = ["model", "worker_speed", "measured_pairs", "workers", "hours", "serial_hours",
            "ship_hours", "speedup", "max_speedup", "worker_mem_gib", "driver_mem_gib"]  # fmt: skip
    print("measured on", SMOLLM.name, json.dumps(asdict(m)))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [f"{r['measured_pairs']}/{r['of_pairs']}" if k == "measured_pairs" else str(r[k])
                 for k in head]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": asdict(m), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
