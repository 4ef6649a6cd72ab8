"""Quantize-and-compare, shared by the CLI and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from quantbalance.cli.loading import DataOptions, load_source
from quantbalance.evaluate import compare, model_nbytes
from quantbalance.quantize import as_plan, quantize


def quantize_and_compare(
    plans: list[str],
    task: str | None,
    model: str | None,
    hf: str | None,
    algorithm: str | None,
    console: Console,
    onnx: str | None = None,
    data: DataOptions | None = None,
    on_model: Callable[[str, Any, Any], None] | None = None,
) -> dict[str, Any]:
    """Quantize the source model with each plan, evaluate, print one table, return the data.

    Args:
        plans: preset names or plan file paths.
        task: benchmark task name (or None).
        model: ``module:factory`` (or None).
        hf: HF folder or cached hub id (or None).
        algorithm: algorithm override (or None).
        console: where to print.
        onnx: an ONNX file (or None).
        data: the data options (``--data`` etc.) for ``hf``/``onnx``/a bare ``model``.
        on_model: called as ``on_model(plan_name, qmodel, task)`` after each quantization
            (e.g. to export it).

    Returns:
        JSON-ready dict: the float reference and one entry per plan.
    """
    with console.status("loading model and data"):
        src = load_source(task, model, hf, onnx, data)
    t0 = time.perf_counter()
    with console.status("evaluating the float model"):
        ref = src.reference
    result: dict[str, Any] = {
        "task": src.name,
        "primary_metric": src.primary_metric,
        "data": src.info.get("data"),
        "float": {
            "metrics": ref,
            "bytes": model_nbytes(src.model),
            "eval_s": time.perf_counter() - t0,
        },
        "plans": {},
    }
    for name in plans:
        plan = as_plan(name)
        t0 = time.perf_counter()
        q = quantize(src.model, plan, calib_data=src.calib_data or None, algorithm=algorithm)
        q_s = time.perf_counter() - t0
        if on_model is not None:
            on_model(plan.name, q, src)
        with console.status(f"evaluating {plan.name}"):
            c = compare(src.model, q, src)
        result["plans"][plan.name] = c.to_dict() | {
            "quantize_s": q_s,
            "plan": getattr(q, "qb_plan", plan).model_dump(mode="json"),  # with its int8 target
            "unsupported": q.qb_info.unsupported,
            "kept_float": q.qb_info.kept_float,
        }
    console.print(results_table(result))
    return result


def results_table(result: dict[str, Any]) -> Table:
    """A rich table: float vs each plan, metrics, size and compression.

    Args:
        result: output of :func:`quantize_and_compare`.

    Returns:
        The table.
    """
    metrics = list(result["float"]["metrics"])
    t = Table("model", *metrics, "size (MB)", "compression", "worst layer SQNR (dB)",
              title=f"quantbalance on {result['task']}")  # fmt: skip
    fb = result["float"]["bytes"]
    t.add_row("float", *[f"{result['float']['metrics'][m]:.4f}" for m in metrics],
              f"{fb / 1e6:.2f}", "1.00x", "-")  # fmt: skip
    for name, r in result["plans"].items():
        cells = []
        for m in metrics:
            v, d = r["quant_metrics"].get(m), r["deltas"].get(m)
            cells.append("-" if v is None else f"{v:.4f} ({d:+.4f})")
        sq = [v for v in r["layer_sqnr"].values() if v is not None]
        worst = f"{min(sq):.1f}" if sq else "-"
        t.add_row(name, *cells, f"{r['quant_bytes'] / 1e6:.2f}", f"{r['compression']:.2f}x", worst)
    t.caption = "\n".join(f"{n}: {r['coverage']}" for n, r in result["plans"].items())
    return t
