"""Peak memory of ``qb.quantize`` on a transformer task, one fresh process per config.

Usage:
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python bench/bench_memory.py --task smollm \
        [--configs gptq-w4-g128,rtn-w4-g128] [--copy] [--no-eval] [--out bench/results/...]

A config is ``ALGORITHM-PRESET`` (``gptq-w4-g128``); the algorithm overrides every spec's, GPTQ
runs with its default options (activation ordering, static groups), the calibration set is the
task's default (``smollm``: 16 windows of 512 tokens). ``qb.quantize`` runs with
``inplace=True`` unless ``--copy`` (the default copy, which keeps the float model).

Each child process reports (RSS = resident set size, MB = 2^20 bytes):

* ``rss_imports_mb``: after importing torch, quantbalance and transformers' model and tokenizer
  classes (transformers imports them lazily, on first use: ~100 MB of code) — the runtime
  baseline;
* ``rss_loaded_mb``: after loading the task (float model, calibration and evaluation data);
* ``peak_quantize_mb``: the peak RSS during ``quantize`` alone: the kernel's high-water mark
  (``ru_maxrss``) is reset just before it through ``/proc/self/clear_refs``; where that is not
  allowed, an RSS sampler (every 10 ms) gives it;
* ``float_model_bytes``: bytes of the float model's parameters (tied ones once);
* ``ratio``: ``(peak_quantize - rss_imports) / float_model_bytes``: the target is <= 2;
  ``extra_over_loaded_mb``: ``peak_quantize - rss_loaded`` (the loaded model's weights are a
  memory map of the task's safetensors cache, resident only once read: ``quantize`` reads them);
* ``quantize_s``, ``perplexity`` (or the task's metrics), ``eval_s``, ``ru_maxrss_mb`` (the
  whole process's peak, evaluation included).

Rows are written to ``--out`` (rows with the same task, config and mode are replaced).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rss import PeakRSS, rss_mb

DEFAULT_OUT = "bench/results/memory-smollm.json"


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def run_one(task_name: str, config: str, inplace: bool, evaluate: bool, threads: int) -> dict:
    """Load, quantize (and evaluate) one config in this process.

    Args:
        task_name: a ``qb.tasks`` name.
        config: ``ALGORITHM-PRESET``.
        inplace: pass ``inplace=True`` to ``quantize``.
        evaluate: run the task's evaluation afterwards.
        threads: torch intra-op threads.

    Returns:
        The JSON row.
    """
    import torch
    from transformers import (  # noqa: F401 - the runtime baseline: model and tokenizer code
        AutoModel,
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaForCausalLM,
    )

    import quantbalance as qb

    torch.set_num_threads(threads)
    gc.collect()
    rss_imports = rss_mb()
    task = qb.tasks.load(task_name)
    float_bytes = sum(p.numel() * p.element_size() for p in task.model.parameters())
    gc.collect()
    rss_loaded = rss_mb()
    algorithm, preset = config.split("-", 1)
    reset = _reset_peak()
    t0 = time.perf_counter()
    with PeakRSS(every_s=0.01) as sampler:
        model = qb.quantize(task.model, preset, calib_data=task.calib_data, algorithm=algorithm,
                            progress=False, inplace=inplace)  # fmt: skip
    quantize_s = time.perf_counter() - t0
    peak = _maxrss_mb() if reset else sampler.peak
    gc.collect()
    row: dict[str, Any] = {
        "task": task_name,
        "config": config,
        "mode": "inplace" if inplace else "copy",
        "rss_imports_mb": round(rss_imports, 1),
        "rss_loaded_mb": round(rss_loaded, 1),
        "peak_quantize_mb": round(peak, 1),
        "peak_method": "ru_maxrss after clear_refs" if reset else "sampler 10 ms",
        "peak_sampled_mb": round(sampler.peak, 1),
        "rss_after_quantize_mb": round(rss_mb(), 1),
        "float_model_bytes": float_bytes,
        "ratio": round((peak - rss_imports) * 2**20 / float_bytes, 3),
        "extra_over_loaded_mb": round(peak - rss_loaded, 1),
        "quantize_s": round(quantize_s, 1),
        "n_calib_batches": len(task.calib_data),
        "size_bytes": qb.model_nbytes(model),
    }
    if evaluate:
        t0 = time.perf_counter()
        row.update({k: round(v, 5) for k, v in task.evaluate(model).items()})
        row["eval_s"] = round(time.perf_counter() - t0, 1)
    row.update(
        ru_maxrss_mb=round(_maxrss_mb(), 1),
        threads=threads,
        load_avg_1m=round(os.getloadavg()[0], 2),
        torch=torch.__version__,
        python=platform.python_version(),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    return row


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["task"], row["config"], row["mode"]


def _save(out: Path, rows: list[dict[str, Any]]) -> None:
    old = json.loads(out.read_text()) if out.is_file() else []
    keys = {_key(r) for r in rows}
    kept = [r for r in old if _key(r) not in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept + rows, indent=1) + "\n")


def main() -> None:
    """Run every config in its own child process and save the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="smollm")
    ap.add_argument("--configs", default="gptq-w4-g128")
    ap.add_argument("--copy", action="store_true", help="quantize a copy (inplace=False)")
    ap.add_argument("--no-eval", action="store_true", help="skip the task's evaluation")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.one:
        row = run_one(args.task, args.configs, not args.copy, not args.no_eval, args.threads)
        sys.stdout.write("ROW " + json.dumps(row) + "\n")
        return
    for config in args.configs.split(","):
        cmd = [sys.executable, __file__, "--one", "--task", args.task, "--configs", config,
               "--threads", str(args.threads)]  # fmt: skip
        cmd += ["--copy"] * args.copy + ["--no-eval"] * args.no_eval
        logging.info("running %s %s", args.task, config)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sys.stderr.write(proc.stderr[-4000:])
        rows = [json.loads(x[4:]) for x in proc.stdout.splitlines() if x.startswith("ROW ")]
        if proc.returncode or not rows:
            logging.error("%s %s failed (exit %d)", args.task, config, proc.returncode)
            continue
        _save(Path(args.out), rows)
        logging.info("%s", json.dumps(rows[0]))


if __name__ == "__main__":
    main()
