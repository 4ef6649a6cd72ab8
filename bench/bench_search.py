"""The balance search on the benchmark tasks, against the best uniform preset.

Usage:
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python bench/bench_search.py \
        [--tasks minilm,fashion] [--out bench/results/search.json] [--reports out/bench_search]
    python bench/bench_search.py --tasks smollm --max-bytes 200MB,150MB --no-rerun \
        --out bench/results/search-smollm.json

Budgets (decided here, see BENCHMARKS.md):
* ``minilm``: ``max_drop`` 0.5 % and 1 % *relative* on ``cosine_mean`` (the float model's
  cosine to itself is 1.0, so this equals an absolute drop of 0.005 / 0.01 in cosine);
* ``fashion``: ``max_drop`` 0.5 and 1.0 *points* of test accuracy (absolute, ``relative=False``);
* ``smollm``: ``max_bytes`` 200 MB (between the w4-g128 and int8-weight presets) and 150 MB
  (below every preset), or ``--max-bytes``. The comparison: the chosen Plan's held-out
  perplexity against the best (lowest held-out perplexity) uniform preset that fits the same
  size. Single-layer measurements: ``--measure`` pairs (default 48) on one 512-token window,
  the other pairs estimated from the Fisher proxy; 8 calibration windows.

Splits (``search.holdout.split_task``): minilm searches on sentences 0-249 (single-layer
measurements on the first 64) and is judged on sentences 250-499; fashion searches on test
images 0-4999 and is judged on 5000-9999; smollm searches on windows 0-3 (tokens 0-2047) and
is judged on the 4 windows after the calibration tokens. For drop budgets the comparison preset
is the best uniform preset that meets the same budget *on the held-out split* (smallest, and
fastest). The first budget of each
task runs on an empty cache (cold), the second reuses the single-layer measurements, and both
run again on the warm cache. One JSON row per (task, budget).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from quantbalance.search import Budget, search
from quantbalance.tasks.splits import split_task

BUDGETS = {
    "minilm": [Budget(max_drop=0.005, relative=True), Budget(max_drop=0.01, relative=True)],
    "fashion": [Budget(max_drop=0.5, relative=False), Budget(max_drop=1.0, relative=False)],
    "smollm": [Budget(max_bytes=200e6), Budget(max_bytes=150e6)],
}
N_SENS = {"minilm": 64, "fashion": None, "smollm": 1}
MEASURE: dict[str, bool | int] = {"smollm": 48}
SPLIT_KWARGS: dict[str, dict[str, Any]] = {"smollm": {"n_calib": 8}}


def _best(presets: list[dict[str, Any]], limit: float, axis: str) -> dict[str, Any] | None:
    ok = [p for p in presets if p["holdout_drop"] is not None and p["holdout_drop"] <= limit]
    return min(ok, key=lambda p: p[axis]) if ok else None


def row(task: str, res: Any, wall: float, warm_wall: float | None, cold: bool) -> dict[str, Any]:
    """One JSON row comparing the chosen Plan with the best preset meeting the budget.

    Args:
        task: task name.
        res: the SearchResult.
        wall: seconds of the first run (cold cache when ``cold``).
        warm_wall: seconds of the rerun on a warm cache (None: not rerun).
        cold: whether the first run started from an empty cache.

    Returns:
        The row.
    """
    d = res.to_dict()
    c, limit = d["chosen"], res.budget.limit
    m = res.metric
    if res.budget.kind == "drop":
        by_size = _best(d["presets"], limit, "nbytes")
        by_speed = _best(d["presets"], limit, "latency_ms")
    else:
        by_size = by_speed = None
    return {
        "task": task,
        "budget": res.budget.describe(),
        "max_drop": limit,
        "relative": res.budget.relative,
        "met_budget": res.met_budget,
        "message": res.message,
        "chosen": c["name"],
        "chosen_bytes": c["nbytes"],
        "chosen_latency_ms": c["latency_ms"],
        "chosen_metric_search": c["metrics"][m],
        "chosen_metric_holdout": (c["holdout_metrics"] or {}).get(m),
        "chosen_drop_holdout": c["holdout_drop"],
        "float_bytes": d["float"]["nbytes"],
        "float_latency_ms": d["float"]["latency_ms"],
        "float_metric_holdout": (d["holdout_reference"] or {}).get(m),
        "best_preset_by_size": by_size and by_size["name"],
        "best_preset_bytes": by_size and by_size["nbytes"],
        "smaller_than_best_preset": by_size and 1 - c["nbytes"] / by_size["nbytes"],
        "best_preset_by_speed": by_speed and by_speed["name"],
        "best_preset_latency_ms": by_speed and by_speed["latency_ms"],
        "faster_than_best_preset": by_speed and 1 - c["latency_ms"] / by_speed["latency_ms"],
        **(cost_comparison(res, d) if res.budget.kind != "drop" else {}),
        "presets": {
            p["name"]: {
                "bytes": p["nbytes"],
                "latency_ms": p["latency_ms"],
                "drop_search": p["drop"],
                "drop_holdout": p["holdout_drop"],
                "metric_holdout": (p["holdout_metrics"] or {}).get(m),
            }
            for p in d["presets"]
        },
        "preset_dominates_front_point": d["dominated"],
        "evaluations": len(d["log"]),
        "wall_s_first": wall,
        "first_run_cold_cache": cold,
        "wall_s_warm": warm_wall,
        "timings_first": d["timings"],
        "chosen_choice": c["choice"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load": os.getloadavg()[0],
        "date": dt.date.today().isoformat(),
    }


def cost_comparison(res: Any, d: dict[str, Any]) -> dict[str, Any]:
    """Size (or latency) budgets: the chosen Plan's held-out metric against the best preset.

    The best preset is the uniform preset that fits the same budget with the best held-out
    metric (none when no preset fits).

    Args:
        res: the SearchResult.
        d: ``res.to_dict()``.

    Returns:
        Fields for the row.
    """
    m, sign = res.metric, 1.0 if res.higher_is_better else -1.0
    axis = "nbytes" if res.budget.kind == "bytes" else "latency_ms"
    fits = [
        p
        for p in d["presets"]
        if p[axis] <= res.budget.limit and (p["holdout_metrics"] or {}).get(m) is not None
    ]
    best = max(fits, key=lambda p: sign * p["holdout_metrics"][m], default=None)
    mine = (d["chosen"]["holdout_metrics"] or {}).get(m)
    out: dict[str, Any] = {
        "presets_fitting_budget": [p["name"] for p in fits],
        "best_fitting_preset": best and best["name"],
        "best_fitting_preset_bytes": best and best["nbytes"],
        "best_fitting_preset_metric_holdout": best and best["holdout_metrics"][m],
    }
    if best is not None and mine is not None:
        theirs = best["holdout_metrics"][m]
        out["chosen_better_than_best_fitting_preset"] = sign * (mine - theirs) > 0
        out["metric_gain_vs_best_fitting_preset"] = sign * (mine - theirs) / abs(theirs)
    return out


def run_task(
    task: str,
    cache: Path,
    reports: Path | None,
    max_evals: int,
    objectives: list[str],
    budgets: list[Budget] | None = None,
    measure: bool | int = True,
    rerun: bool = True,
) -> list[dict]:
    """Run every budget (and objective) of a task: the first on a cold cache, each twice.

    Args:
        task: ``minilm`` or ``fashion``.
        cache: an empty cache folder for this task.
        reports: where to write one HTML report per run (or None).
        max_evals: verification evaluations per search.
        objectives: what drop budgets minimise (``bytes``, ``latency``).
        budgets: the budgets (default ``BUDGETS[task]``).
        measure: single-layer measurement mode (``search(measure=...)``).
        rerun: run each search a second time on the warm cache.

    Returns:
        The rows.
    """
    sp = split_task(task, n_sensitivity=N_SENS[task], **SPLIT_KWARGS.get(task, {}))
    kwargs = {
        "measure": measure,
        "holdout": sp.holdout,
        "sensitivity_source": sp.sensitivity,
        "cache_dir": cache,
        "max_evals": max_evals,
        "progress": False,
    }
    rows = []
    runs = [(b, o) for o in objectives for b in (budgets or BUDGETS[task])]
    was_empty = not any(cache.glob("sens/*.json"))
    for i, (budget, objective) in enumerate(runs):
        t0 = time.perf_counter()
        res = search(sp.search.model, sp.search, budget, objective=objective, **kwargs)
        wall = time.perf_counter() - t0
        warm = None
        if rerun:
            t0 = time.perf_counter()
            search(sp.search.model, sp.search, budget, objective=objective, **kwargs)
            warm = time.perf_counter() - t0
        cold = i == 0 and was_empty
        rows.append(row(task, res, wall, warm, cold=cold) | {"objective": objective})
        logging.info("%s %s: %s", task, budget.describe(), json.dumps(rows[-1], default=str))
        if reports is not None:
            from quantbalance.report import write_report

            out = reports / f"{task}-{objective}-{i}"
            write_report(res, out, model=sp.search.model, calib_data=sp.search.calib_data)
    return rows


def main() -> None:
    """Run the benchmark and write the JSON rows."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="minilm,fashion")
    ap.add_argument("--out", default="bench/results/search.json")
    ap.add_argument("--reports", default="out/bench_search")
    ap.add_argument("--max-evals", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--objectives", default="bytes", help="bytes,latency")
    ap.add_argument("--cache", default=None, help="keep the cache here (default: a fresh temp)")
    ap.add_argument("--max-bytes", default=None, help="size budgets, e.g. 200MB,150MB")
    ap.add_argument("--measure", type=int, default=None, help="measured pairs (default all)")
    ap.add_argument("--no-rerun", action="store_true", help="skip the warm-cache rerun")
    args = ap.parse_args()
    budgets = None
    if args.max_bytes:
        from quantbalance.cli.search_cmd import parse_bytes

        budgets = [Budget(max_bytes=parse_bytes(b)) for b in args.max_bytes.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("quantbalance.quantize").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    for task in args.tasks.split(","):
        keep = args.cache is not None
        cache = Path(args.cache) / task if keep else Path(tempfile.mkdtemp(prefix=f"qb-{task}-"))
        try:
            objectives = args.objectives.split(",")
            measure = args.measure if args.measure is not None else MEASURE.get(task, True)
            rows += run_task(
                task,
                cache,
                Path(args.reports),
                args.max_evals,
                objectives,
                budgets=budgets,
                measure=measure,
                rerun=not args.no_rerun,
            )
        finally:
            if not keep:
                shutil.rmtree(cache, ignore_errors=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
