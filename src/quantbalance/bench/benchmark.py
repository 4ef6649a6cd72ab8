"""Deployed latency, file bytes and task metrics of many engines on one model, in one run.

An *engine* is a small named factory (``ENGINES``, see ``bench/engines.py`` for what each
runs) that turns the task's float model into a ``Runner``: a callable on one batch plus the bytes
of the file it deploys. ``benchmark`` builds every engine, scores it with the task's own
evaluation function, then times every engine on every batch size round by round — interleaved,
so load from a neighbour hits all engines alike — and reports medians. ``bench_onnx`` times any
ONNX file on inputs generated from its graph (``bench/onnx_file.py``); rows, results and the
timing loop live in ``bench/result.py``.

>>> take(torch.arange(3), 5).tolist()
[0, 1, 2, 0, 1]
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms import parse_algorithm
from quantbalance.bench.engines import ENGINES, BenchContext, Engine
from quantbalance.bench.result import (
    BenchResult,
    BenchRow,
    add_ratios,
    env_info,
)
from quantbalance.calibration.batch import map_tensors
from quantbalance.errors import ConfigError
from quantbalance.evaluate.task import Task
from quantbalance.evaluate.timing import Clock, time_interleaved
from quantbalance.plan import ALL_PRESETS
from quantbalance.progress import steps

log = logging.getLogger(__name__)

DEFAULT_ENGINES = tuple(ENGINES)
DEFAULT_PRESETS = ("w8a8", "int8-weight", "w4-g128")


# --------------------------------------------------------------------------- the run


def benchmark(
    task: Task,
    *,
    engines: Sequence[str] = DEFAULT_ENGINES,
    presets: Sequence[str] = DEFAULT_PRESETS,
    batch_sizes: Sequence[int] | None = None,
    rounds: int = 5,
    threads: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    clock: Clock = time.perf_counter,
    registry: Mapping[str, Engine] | None = None,
) -> BenchResult:
    """Build, score and time engines on one task.

    Args:
        task: the task (its model, calibration batches, example batch and evaluate function).
        engines: keys of ``registry`` (default ``ENGINES``), in row order.
        presets: quantbalance presets, for the per-preset engines; ``preset+algorithm``
            (e.g. ``w8a8+smoothquant``) quantizes with those algorithm steps.
        batch_sizes: timed batch sizes, cut from (or tiled past) the example batch; default
            ``(1, size of the example batch)``.
        rounds: timed rounds; each round calls every engine once per batch size.
        threads: torch and ONNX Runtime threads (default: torch's current setting).
        workdir: folder to keep the deployed files in (default: a temporary folder, deleted).
        clock: the timer (seconds); tests pass a fake one.
        registry: the engine factories (default ``ENGINES``).

    Returns:
        The result; an engine that cannot be built is a row with ``skipped`` set.

    Example:
        >>> res = benchmark(qb.tasks.load("fashion"), engines=["bf16", "qb-ort"])  # doctest: +SKIP
        >>> print(res.to_markdown())  # doctest: +SKIP
    """
    registry = ENGINES if registry is None else registry
    check_names(engines, registry, "engine")
    if any(registry[e].per_preset for e in engines):
        check_names([p.partition("+")[0] for p in presets], ALL_PRESETS, "preset")
        for p in presets:
            if "+" in p:
                parse_algorithm(p.partition("+")[2])
    if rounds < 1:
        raise ConfigError(f"rounds={rounds}; accepted: an integer >= 1")
    sizes = list(batch_sizes or (1, _batch_len(task.example_inputs)))
    if any(b < 1 for b in sizes):
        raise ConfigError(f"batch sizes {sizes}; accepted: integers >= 1")
    threads = threads or torch.get_num_threads()
    batches = {b: take(task.example_inputs, b) for b in sizes}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    from torch._dynamo import config as dynamo_config  # deferred: torch._dynamo is slow to import

    # Every compiled engine wraps the same forward code: one dynamo cache entry per engine and
    # shape. Past dynamo's default limit (8) later engines would silently run eager.
    limit = max(dynamo_config.recompile_limit, 4 * len(engines) * len(presets) * len(sizes))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="qb-bench-") as tmp,
            dynamo_config.patch(recompile_limit=limit),
        ):
            folder = Path(workdir or tmp)  # the deployed files, measured then (by default) deleted
            folder.mkdir(parents=True, exist_ok=True)
            ctx = BenchContext(task, folder, threads)
            rows, runs = _build_all(ctx, engines, presets, registry, batches)
            times = time_interleaved(runs, batches, rounds, clock)
    finally:
        torch.set_num_threads(previous)
    for r in rows:
        r.ms = times.get(r.engine, {})
    return BenchResult(task.name, sizes, rounds, add_ratios(rows), env_info(threads))


def _build_all(
    ctx: BenchContext,
    engines: Sequence[str],
    presets: Sequence[str],
    registry: Mapping[str, Engine],
    batches: dict[int, Any],
) -> tuple[list[BenchRow], dict[str, Callable[[Any], Any]]]:
    rows: list[BenchRow] = []
    runs: dict[str, Callable[[Any], Any]] = {}
    todo = [
        (registry[k], p) for k in engines for p in (presets if registry[k].per_preset else [None])
    ]
    for eng, preset in steps(todo, "bench: build and score engines"):
        row = BenchRow(eng.label.format(preset=preset))
        rows.append(row)
        log.info("building %s", row.engine)
        try:  # one broken engine must not lose the whole run: its row says why
            runner = eng.build(ctx, preset)
            with torch.inference_mode():
                for batch in batches.values():  # warm-up (and compilation) per shape
                    runner.run(batch)
                    runner.run(batch)
                row.metrics = dict(ctx.task.evaluate(RunnerModule(runner.run)))
        except Exception as exc:
            log.warning("%s skipped: %s", row.engine, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            row.skipped = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            continue
        row.nbytes, row.note = runner.nbytes, runner.note
        runs[row.engine] = runner.run
    return rows, runs


class RunnerModule(nn.Module):
    """A runner dressed as a module, so the task's ``evaluate(model)`` can score it."""

    def __init__(self, run: Callable[[Any], Any]) -> None:
        super().__init__()
        self.run = run

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Call the runner with the batch the module was called with; float32 output."""
        batch = kwargs if kwargs else (args[0] if len(args) == 1 else args)
        out = self.run(batch)
        out = out[0] if isinstance(out, tuple | list) else out
        return torch.as_tensor(out).float()


# --------------------------------------------------------------------------- helpers


def take(batch: Any, n: int) -> Any:
    """The first ``n`` items of a batch, tiling it when it holds fewer.

    Args:
        batch: a Tensor, tuple/list or mapping of tensors (batch dimension first).
        n: the batch size wanted.

    Returns:
        The same structure with batch dimension ``n``.

    Example:
        >>> take(torch.arange(3), 5).tolist()
        [0, 1, 2, 0, 1]
    """

    def tile(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        reps = -(-n // t.shape[0])
        return (t.repeat(reps, *[1] * (t.dim() - 1)) if reps > 1 else t)[:n].clone()

    return map_tensors(batch, tile)


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    values = list(batch.values()) if isinstance(batch, Mapping) else list(batch)
    return _batch_len(values[0])


def check_names(names: Sequence[str], accepted: Mapping[str, Any], what: str) -> None:
    """Reject unknown (or no) names with a ``ConfigError`` that lists the accepted ones.

    Args:
        names: the names given.
        accepted: the known names (keys).
        what: what they are, for the message (``engine``, ``preset``, ``task``).
    """
    bad = [n for n in names if n not in accepted]
    if bad or not names:
        raise ConfigError(
            f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; "
            f"accepted: {', '.join(accepted)}"
        )
