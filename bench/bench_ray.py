"""The search on Ray against the serial search: same Plan, and the speed-up of 2 workers.

Usage:
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python bench/bench_ray.py \
        [--tasks fashion,minilm] [--workers 1,2] [--out bench/results/ray.json] [--no-serial]

For each task (split as in ``bench/bench_search.py``, first budget there), the search runs with
the cache off: serially in this process (``torch.set_num_threads(1)``), then with
``RayExecutor(workers=n, threads=1)`` on a local ``ray.init(num_cpus=max(workers))`` for each
``n``. A row per run: wall time per phase (``SearchResult.timings``), whether the Plan and the
chosen Plan's metrics equal the serial run's, the number of single-layer measurements and their
mean cost (seconds per evaluation, the input of ``bench/project_scale.py``), and the speed-up
over the 1-worker Ray run. Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from quantbalance.search import search
from quantbalance.search.executor import RayExecutor
from quantbalance.tasks.splits import split_task


def _bench_search() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parent / "bench_search.py"
    spec = importlib.util.spec_from_file_location("bench_search", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def one(task: str, executor: Any, label: str) -> tuple[dict[str, Any], Any]:
    """One search of ``task`` with ``executor``; its row and result.

    Args:
        task: ``fashion`` or ``minilm``.
        executor: None (serial) or an executor.
        label: the row's ``run`` label.

    Returns:
        ``(row, SearchResult)``.
    """
    bs = _bench_search()
    sp = split_task(task, n_sensitivity=bs.N_SENS[task], **bs.SPLIT_KWARGS.get(task, {}))
    t0 = time.perf_counter()
    res = search(sp.search.model, sp.search, bs.BUDGETS[task][0], holdout=sp.holdout,
                 sensitivity_source=sp.sensitivity, cache_dir=None, progress=False,
                 executor=executor)  # fmt: skip
    wall = time.perf_counter() - t0
    pairs = sum(
        1
        for layer in res.sensitivity.entries.values()
        for k, e in layer.items()
        if k != "float" and e.get("measured")
    )
    evals = [r for r in res.log if not r["cached"]]
    row = {
        "task": task,
        "run": label,
        "wall_s": round(wall, 2),
        "timings": {k: round(v, 2) for k, v in res.timings.items()},
        "layers": res.info["layers"],
        "sensitivity_evals": pairs,
        "sensitivity_eval_s": round(res.timings["sensitivity"] / max(pairs, 1), 4),
        "plan_evals": len(evals),
        "plan_eval_s": round(sum(r["seconds"] for r in evals) / max(len(evals), 1), 4),
        "plan": res.plan.model_dump(mode="json"),
        "chosen_metrics": res.chosen.metrics,
    }
    return row, res


def main() -> None:
    """Serial, then Ray with each worker count; write the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="fashion,minilm")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default="bench/results/ray.json")
    ap.add_argument("--no-serial", action="store_true",
                    help="skip the serial run: Plans are compared with the first Ray run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import ray

    torch.set_num_threads(1)
    counts = [int(x) for x in args.workers.split(",")]
    ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
    rows = []
    for task in args.tasks.split(","):
        ref, ref_label = None, "serial"
        if not args.no_serial:
            base, ref = one(task, None, "serial")
            rows.append(base)
            _write(Path(args.out), rows)
        by_workers = {}
        for n in counts:
            row, res = one(task, RayExecutor(workers=n, threads=1), f"ray-{n}")
            if ref is None:
                ref, ref_label = res, row["run"]
            row["compared_with"] = ref_label
            row["same_plan"] = res.plan == ref.plan
            row["same_metrics"] = res.chosen.metrics == ref.chosen.metrics
            by_workers[n] = row
            rows.append(row)
            _write(Path(args.out), rows)
        for row in by_workers.values():
            one_worker = by_workers.get(1)
            if one_worker:
                row["speedup_vs_1_worker"] = round(one_worker["wall_s"] / row["wall_s"], 3)
                phase = one_worker["timings"]["sensitivity"] / max(row["timings"]["sensitivity"],
                                                                   1e-9)  # fmt: skip
                row["sensitivity_speedup_vs_1_worker"] = round(phase, 3)
        _write(Path(args.out), rows)
        logging.info("%s: %s", task, json.dumps([{k: v for k, v in r.items() if k != "plan"}
                                                 for r in rows if r["task"] == task]))  # fmt: skip
    ray.shutdown()


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    """Write the rows so far (each run is minutes long: keep what finished)."""
    import ray

    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "ray": ray.__version__, "cpus": os.cpu_count()}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
