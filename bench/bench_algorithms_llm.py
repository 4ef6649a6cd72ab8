"""GPTQ and AWQ against round to nearest on the transformer tasks (shared/BENCH_TASKS.md).

Usage:
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python bench/bench_algorithms_llm.py \
        --task smollm [--configs float,rtn-w4-g128,gptq-w4-g128] [--out bench/results/...]

* ``smollm``: perplexity on 20 windows x 512 tokens (calibration: 16 windows x 512 after them).
* ``minilm``: cosine to the float embeddings and top-10 neighbour overlap (500 sentences).

A config is ``ALGORITHM-PRESET[-noact][-mse][@blocks]`` (``gptq-w4-g128``, ``awq+gptq-w3-g128``) or
``float``. The preset quantizes every Linear and embedding table (``qb.preset``: SmolLM2's tied
embedding/LM head included); ``@blocks`` keeps only the transformer blocks' Linear layers (the
usual GPTQ/AWQ setting: embedding and LM head float). The algorithm overrides every spec's.
GPTQ runs with activation ordering (static groups) unless the config has ``-noact``; ``-mse``
sets the specs' ``weight_observer="mse"`` (ranges searched for the least squared error, used by
round to nearest and by GPTQ alike).

Memory: each config runs in its own child process (``ru_maxrss`` is its own peak); the RSS is
sampled every 20 ms during ``quantize`` (``quantize_extra_mb``: peak minus the RSS before, so it
includes ``quantize``'s copy of the model) and during each algorithm step alone
(``step_extra_mb``: peak minus the RSS when the step started). One JSON row per config is
written to ``--out`` (rows with the same task, config and calibration size are replaced).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rss import PeakRSS, rss_mb

SMOLLM = [
    "float",
    "rtn-w4-g128",
    "gptq-w4-g128",
    "awq-w4-g128",
    "awq+gptq-w4-g128",
    "rtn-w3-g128",
    "gptq-w3-g128",
    "awq-w3-g128",
]
MINILM = ["rtn-w4-g128", "gptq-w4-g128", "awq-w4-g128", "awq+gptq-w4-g128"]
DEFAULT_OUT = "bench/results/algorithms_llm.json"


def _measured(fn: Any, into: dict[str, float]) -> Any:
    """Wrap an algorithm step: record its wall time and peak RSS above the RSS at its start."""

    def step(ctx: Any) -> None:
        before = rss_mb()
        t0 = time.perf_counter()
        with PeakRSS(every_s=0.02) as peak:
            fn(ctx)
        into.update(seconds=round(time.perf_counter() - t0, 1),
                    step_extra_mb=round(peak.peak - before, 1))  # fmt: skip

    return step


def run_one(task_name: str, config: str, threads: int, n_calib: int = 0) -> dict[str, Any]:
    """Quantize and evaluate one config in this process.

    Args:
        task_name: ``smollm`` or ``minilm``.
        config: ``float`` or ``ALGORITHM-PRESET[-noact][-mse][@blocks]``.
        threads: torch intra-op threads.
        n_calib: calibration batches (0: the task's default).

    Returns:
        The JSON row.
    """
    import torch

    import quantbalance as qb
    from quantbalance.algorithms import ALGORITHMS
    from quantbalance.algorithms.gptq import gptq_options
    from quantbalance.calibration.sequential import find_blocks

    torch.set_num_threads(threads)
    task = qb.tasks.load(task_name, **({"n_calib": n_calib} if n_calib else {}))
    model_mb = sum(p.numel() * p.element_size() for p in task.model.parameters()) / 2**20
    row: dict[str, Any] = {"task": task_name, "config": config, "tool": "quantbalance"}
    model = task.model
    rss_before = rss_mb()
    if config != "float":
        name, _, scope = config.partition("@")
        flags = set(re.findall(r"-(noact|mse)", name))
        algorithm, preset = re.sub(r"-(noact|mse)", "", name).split("-", 1)
        act_order = "noact" not in flags
        plan = qb.preset(preset)
        if "mse" in flags:
            spec = plan.layers["re:.*"].model_copy(update={"weight_observer": "mse"})
            plan = plan.model_copy(update={"layers": {"re:.*": spec}})
        if scope == "blocks":
            found = find_blocks(task.model)
            assert found is not None, f"{task_name} has no block list"
            pattern = f"re:{re.escape(found[0])}\\..*"
            plan = qb.Plan(name=f"{preset}@blocks", layers={pattern: plan.layers["re:.*"]})
        steps: dict[str, dict[str, float]] = {}
        for step in set(algorithm.split("+")) | {"rtn"}:
            ALGORITHMS[step] = _measured(ALGORITHMS[step], steps.setdefault(step, {}))
        t0 = time.perf_counter()
        with gptq_options(act_order=act_order), PeakRSS(every_s=0.02) as peak:
            model = qb.quantize(
                task.model, plan, calib_data=task.calib_data, algorithm=algorithm, progress=False
            )
        row.update(
            algorithm=algorithm,
            preset=preset,
            scope=scope or "all",
            steps=steps,
            act_order=act_order if "gptq" in algorithm else None,
            quantize_s=round(time.perf_counter() - t0, 1),
            quantize_peak_rss_mb=round(peak.peak, 1),
            quantize_extra_mb=round(peak.peak - rss_before, 1),
            n_calib_batches=len(task.calib_data),
            size_bytes=qb.model_nbytes(model),
        )
    t0 = time.perf_counter()
    row.update({k: round(v, 5) for k, v in task.evaluate(model).items()})
    row.update(
        eval_s=round(time.perf_counter() - t0, 1),
        float_model_mb=round(model_mb, 1),
        rss_before_quantize_mb=round(rss_before, 1),
        ru_maxrss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        threads=threads,
        load_avg_1m=round(os.getloadavg()[0], 2),
        torch=torch.__version__,
        python=platform.python_version(),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    return row


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["task"], row["config"], row.get("n_calib_batches")


def _save(out: Path, rows: list[dict[str, Any]]) -> None:
    old = json.loads(out.read_text()) if out.is_file() else []
    keys = {_key(r) for r in rows}
    kept = [r for r in old if _key(r) not in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept + rows, indent=1) + "\n")


def main() -> None:
    """Run every config of the chosen task(s), one child process each, and save the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=["smollm", "minilm", "all"], default="smollm")
    ap.add_argument("--configs", default="", help="comma-separated (default: the task's list)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-calib", type=int, default=0, help="calibration batches (task default)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.one:
        row = run_one(args.task, args.configs, args.threads, args.n_calib)
        print("ROW " + json.dumps(row), flush=True)
        return
    tasks = ["smollm", "minilm"] if args.task == "all" else [args.task]
    for task in tasks:
        default = SMOLLM if task == "smollm" else MINILM
        configs = args.configs.split(",") if args.configs else default
        for config in configs:
            cmd = [sys.executable, __file__, "--one", "--task", task, "--configs", config,
                   "--threads", str(args.threads), "--n-calib", str(args.n_calib)]  # fmt: skip
            logging.info("running %s %s", task, config)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            sys.stderr.write(proc.stderr[-4000:])
            rows = [json.loads(x[4:]) for x in proc.stdout.splitlines() if x.startswith("ROW ")]
            if proc.returncode or not rows:
                logging.error("%s %s failed (exit %d)", task, config, proc.returncode)
                continue
            _save(Path(args.out), rows)
            logging.info("%s", json.dumps(rows[0]))


if __name__ == "__main__":
    main()
