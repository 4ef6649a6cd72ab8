"""Predicted vs measured deployed latency: is the search's latency model honest on this machine?

Usage: OMP_WAIT_POLICY=PASSIVE python bench/bench_predicted.py [--task minilm|fashion]
       [--presets w8a8,w8a8-dynamic,int8-weight,w4-g128] [--plan out/demo/plan.json]
       [--threads 2] [--rounds 5] [--out PATH]

For each preset (and the chosen Plan of a search, ``--plan``) on the task's example batch:

* predicted: the search's cost model, ``search.costs.measure_costs`` with the default
  ``TorchLatencyModel`` (each layer's torch-engine module timed alone: compiled where it
  quantizes its input, eager elsewhere; plus the rest of the compiled float model; calibrated
  against whole engines where the layers alone do not add up, ratios printed), exactly as
  ``quantbalance search`` predicts it; and the all-eager model (``compile=False``) beside it;
* measured: the deployed torch engine (``to_torch_engine``, compiled) timed in the same process,
  interleaved with the float engines (``quantbalance.bench.benchmark``);
* ratios: predicted / measured (target 0.8–1.2), and measured / the fastest float engine on the
  machine (fp32 or bf16, eager or compiled, torch or ONNX Runtime; named in the output).

Writes JSON (default bench/results/predicted-<task>.json) and prints a markdown table. Time it on
a quiet machine: the ratios are meaningless under load.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch

from quantbalance.bench import benchmark as bm
from quantbalance.bench.engines import ENGINES, BenchContext, Engine, Runner
from quantbalance.calibration.batch import call_model
from quantbalance.deploy.torch_engine import to_torch_engine
from quantbalance.hardware import detect
from quantbalance.plan import Plan
from quantbalance.quantize import as_plan, quantize
from quantbalance.search.cache import Cache, model_hash
from quantbalance.search.costs import measure_costs, preset_options
from quantbalance.search.latency import TorchLatencyModel
from quantbalance.tasks import BENCH_TASKS, load_for_bench
from quantbalance.tasks.base import Task
from quantbalance.transform import fold_batchnorm, quantizable_layers

FLOAT_ENGINES = ("float", "bf16", "bf16-compile", "ort-float", "engine-float")


def predictions(
    task: Task, plans: dict[str, Plan], compile: bool | Literal["auto"] = "auto"
) -> tuple[dict[str, float], dict[str, float]]:
    """The search's predicted latency (ms) of each Plan and of the float model.

    Args:
        task: the task (model and example batch).
        plans: name -> Plan.
        compile: ``TorchLatencyModel(compile=...)``: ``"auto"`` (the search's default) or
            False (all eager).

    Returns:
        ``(name -> predicted milliseconds (``float`` included), the calibration ratios applied
        to the layers' standalone timings (``CostTable.calibration``; empty: none))``.
    """
    base = copy.deepcopy(task.model).eval()
    fold_batchnorm(base)
    names = list(quantizable_layers(base))
    options: dict[str, dict[str, Any]] = {n: {"float": None} for n in names}
    cost_options, choices = preset_options(base, names, options, plans)
    costs = measure_costs(
        base, cost_options, task.example_inputs, TorchLatencyModel(compile=compile), Cache(None),
        model_hash(task.model),
    )  # fmt: skip
    out = {"float": costs.plan_latency(dict.fromkeys(names, "float"))}
    out.update({name: costs.plan_latency(choice) for name, choice in choices.items()})
    return out, costs.calibration


def _float_engine(ctx: BenchContext, preset: str | None) -> Runner:
    """The float model on the torch engine: what the search's float point predicts."""
    engine = to_torch_engine(ctx.task.model)
    return Runner(lambda b: call_model(engine, b), 0, "to_torch_engine(float model)")


def _plan_engine(plan: Plan) -> Engine:
    """A benchmark row for one Plan on the torch engine (as the per-preset ``qb-torch`` rows)."""

    def build(ctx: BenchContext, preset: str | None) -> Runner:
        q = quantize(ctx.task.model, plan, ctx.task.calib_data, progress=False)
        engine = to_torch_engine(q)
        kinds = getattr(engine, "qb_engine_kernels", {})
        return Runner(
            lambda b: call_model(engine, b), 0, ", ".join(f"{k}×{v}" for k, v in kinds.items())
        )

    return Engine(f"qb {plan.name} torch", build)


def run(
    task_name: str, presets: list[str], plan_path: str | None, threads: int, rounds: int
) -> dict[str, Any]:
    """Predict, measure, compare.

    Args:
        task_name: ``minilm`` or ``fashion``.
        presets: preset names.
        plan_path: a Plan file (the search's ``plan.json``) or None.
        threads: torch / ONNX Runtime threads.
        rounds: timed rounds.

    Returns:
        The JSON-ready result.
    """
    torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    task = load_for_bench(task_name)
    plans = {p: as_plan(p) for p in presets}
    registry = {**ENGINES, "engine-float": Engine("float torch engine", _float_engine)}
    engines = [*FLOAT_ENGINES, "qb-torch"]
    if plan_path:
        chosen = Plan.load(plan_path).model_copy(update={"name": "chosen"})
        plans["chosen"] = chosen
        registry["chosen"] = _plan_engine(chosen)
        engines.append("chosen")
    predicted, calibration = predictions(task, plans)
    eager, _ = predictions(task, plans, compile=False)
    b = bm._batch_len(task.example_inputs)
    res = bm.benchmark(
        task, engines=engines, presets=presets, batch_sizes=[b], rounds=rounds,
        threads=threads, registry=registry,
    )  # fmt: skip
    ref = res.float_reference.get(b)
    ref_ms = res.row(ref).ms[b] if ref else None
    rows = []
    for name in ["float", *plans]:
        engine = "float torch engine" if name == "float" else f"qb {name} torch"
        r = res.row(engine)
        ms = r.ms.get(b)
        rows.append({
            "plan": name, "engine": engine, "predicted_ms": predicted[name], "measured_ms": ms,
            "predicted_over_measured": predicted[name] / ms if ms else None,
            "predicted_eager_ms": eager[name],
            "eager_over_measured": eager[name] / ms if ms else None,
            "vs_fastest_float": ms / ref_ms if ms and ref_ms else None,
            "metrics": r.metrics, "note": r.skipped or r.note,
        })  # fmt: skip
    return {
        "task": task_name, "batch": b, "rounds": rounds, "threads": threads,
        "fastest_float": ref, "fastest_float_ms": ref_ms, "hardware": detect().to_dict(),
        "load_avg_start": load0, "calibration": calibration,
        "load_avg": os.getloadavg()[0], "rows": rows, "benchmark": res.to_dict(),
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table.

    Args:
        result: the output of :func:`run`.

    Returns:
        Markdown text.
    """

    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        f"{result['task']}, batch {result['batch']}, {result['threads']} threads; fastest float "
        f"engine: {result['fastest_float']} ({f(result['fastest_float_ms'], '.1f')} ms); load "
        f"{result.get('load_avg_start', 0):.1f} at the start, {result['load_avg']:.1f} at the end",
        "calibration (whole engine / layers timed alone): "
        + (", ".join(f"{k} {v:.2f}" for k, v in result.get("calibration", {}).items()) or "none"),
        "",
        "| plan | predicted ms (search default / all eager) | measured ms | predicted / "
        "measured (default / eager) | × fastest float | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['plan']} | {f(r['predicted_ms'], '.1f')} / "
            f"{f(r['predicted_eager_ms'], '.1f')} | {f(r['measured_ms'], '.1f')} | "
            f"{f(r['predicted_over_measured'], '.2f')} / {f(r['eager_over_measured'], '.2f')} | "
            f"{f(r['vs_fastest_float'], '.2f')} | {r['note']} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run, write JSON, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="minilm", choices=sorted(BENCH_TASKS))
    ap.add_argument("--presets", default="w8a8,w8a8-dynamic,int8-weight,w4-g128")
    ap.add_argument("--plan", default=None, help="the search's plan.json (the chosen Plan)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = run(args.task, args.presets.split(","), args.plan, args.threads, args.rounds)
    out = Path(args.out or f"bench/results/predicted-{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"result written to {out}")


if __name__ == "__main__":
    main()
