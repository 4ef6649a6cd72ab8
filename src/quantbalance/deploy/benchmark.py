"""Deployed latency, file bytes and task metrics of many engines on one model, in one run.

An *engine* is a small named factory (``ENGINES``, see ``deploy/bench_engines.py`` for what each
runs) that turns the task's float model into a ``Runner``: a callable on one batch plus the bytes
of the file it deploys. ``benchmark`` builds every engine, scores it with the task's own
evaluation function, then times every engine on every batch size round by round — interleaved,
so load from a neighbour hits all engines alike — and reports medians. ``bench_onnx`` times any
ONNX file on inputs generated from its graph.

>>> take(torch.arange(3), 5).tolist()
[0, 1, 2, 0, 1]
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.deploy.bench_engines import BF16_ROW, ENGINES, BenchContext, Engine
from quantbalance.errors import CheckpointError, ConfigError, UnsupportedError
from quantbalance.plan import PRESETS
from quantbalance.tasks.base import Task

log = logging.getLogger(__name__)

DEFAULT_ENGINES = (
    "float",
    "bf16",
    "bf16-compile",
    "torchao",
    "ort-float",
    "ort-dynamic",
    "ort-static",
    "qb-torch",
    "qb-ort",
)
DEFAULT_PRESETS = ("w8a8", "int8-weight", "w4-g128")
# Sizes of the real tasks for a benchmark: metrics on a slice, batches of the timed sizes.
BENCH_TASKS: dict[str, dict[str, Any]] = {
    "minilm": {"n_eval": 64, "n_calib": 100},
    "fashion": {"n_test": 1024, "eval_batch": 64},
}
Clock = Callable[[], float]


@dataclass
class BenchRow:
    """One engine's results.

    Attributes:
        engine: the row name.
        ms: batch size -> median milliseconds per call.
        nbytes: bytes of the deployed file (None for a skipped row).
        metrics: the task's metrics of this engine's outputs.
        vs_bf16: batch size -> ``ms / ms of torch bf16`` (empty without a bf16 row).
        note: what the engine really did.
        skipped: why the row has no numbers ("" when it has).
    """

    engine: str
    ms: dict[int, float] = field(default_factory=dict)
    nbytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    vs_bf16: dict[int, float] = field(default_factory=dict)
    note: str = ""
    skipped: str = ""


@dataclass
class BenchResult:
    """A benchmark run: rows plus the conditions it ran under.

    Attributes:
        name: the task (or ONNX file) measured.
        batch_sizes: timed batch sizes.
        rounds: timed rounds (the medians are over these).
        rows: one per engine, in build order.
        env: threads, machine, versions, date, load average at the end.
    """

    name: str
    batch_sizes: list[int]
    rounds: int
    rows: list[BenchRow]
    env: dict[str, Any] = field(default_factory=dict)

    def row(self, engine: str) -> BenchRow:
        """The row named ``engine``.

        Args:
            engine: a row name, e.g. ``"torch bf16"``.

        Returns:
            The row.
        """
        for r in self.rows:
            if r.engine == engine:
                return r
        raise ConfigError(f"no row {engine!r}; rows: {', '.join(r.engine for r in self.rows)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (batch-size keys become strings).

        Returns:
            ``{"name", "batch_sizes", "rounds", "env", "rows": [...]}``.
        """
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["ms"] = {str(k): v for k, v in r.ms.items()}
            d["vs_bf16"] = {str(k): v for k, v in r.vs_bf16.items()}
            rows.append(d)
        return {
            "name": self.name,
            "batch_sizes": self.batch_sizes,
            "rounds": self.rounds,
            "env": self.env,
            "rows": rows,
        }

    def to_markdown(self) -> str:
        """The result as a markdown table.

        Returns:
            Markdown text, one line per row.
        """
        names = sorted({k for r in self.rows for k in r.metrics})
        head = [
            "engine",
            *[f"b{b} ms" for b in self.batch_sizes],
            *[f"b{b} vs bf16" for b in self.batch_sizes],
            "file MB",
            *names,
            "note",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [
                r.engine,
                *[fmt_num(r.ms.get(b), ".1f") for b in self.batch_sizes],
                *[fmt_num(r.vs_bf16.get(b), ".2f", "x") for b in self.batch_sizes],
                fmt_num(None if r.nbytes is None else r.nbytes / 1e6, ".2f"),
                *[fmt_num(r.metrics.get(k), ".5g") for k in names],
                (r.skipped and f"skipped: {r.skipped}") or r.note,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def fmt_num(x: float | None, spec: str, suffix: str = "") -> str:
    """Format a number, ``-`` for a missing one.

    Args:
        x: the number or None.
        spec: a format spec such as ``".2f"``.
        suffix: appended to a formatted number.

    Returns:
        The text.

    Example:
        >>> fmt_num(1.234, ".1f", "x"), fmt_num(None, ".1f")
        ('1.2x', '-')
    """
    return "-" if x is None else f"{x:{spec}}{suffix}"


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
        presets: quantbalance presets, for the per-preset engines.
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
        check_names(presets, PRESETS, "preset")
    if rounds < 1:
        raise ConfigError(f"rounds={rounds}; accepted: an integer >= 1")
    sizes = list(batch_sizes or (1, _batch_len(task.example_inputs)))
    if any(b < 1 for b in sizes):
        raise ConfigError(f"batch sizes {sizes}; accepted: integers >= 1")
    threads = threads or torch.get_num_threads()
    batches = {b: take(task.example_inputs, b) for b in sizes}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    from torch._dynamo import config as dynamo_config

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
    return BenchResult(task.name, sizes, rounds, add_ratios(rows), _env(threads))


def _build_all(
    ctx: BenchContext,
    engines: Sequence[str],
    presets: Sequence[str],
    registry: Mapping[str, Engine],
    batches: dict[int, Any],
) -> tuple[list[BenchRow], dict[str, Callable[[Any], Any]]]:
    rows: list[BenchRow] = []
    runs: dict[str, Callable[[Any], Any]] = {}
    for key in engines:
        eng = registry[key]
        for preset in presets if eng.per_preset else [None]:
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
                log.warning(
                    "%s skipped: %s", row.engine, exc, exc_info=log.isEnabledFor(logging.DEBUG)
                )
                row.skipped = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                continue
            row.nbytes, row.note = runner.nbytes, runner.note
            runs[row.engine] = runner.run
    return rows, runs


def time_interleaved(
    runs: Mapping[str, Callable[[Any], Any]],
    batches: Mapping[int, Any],
    rounds: int,
    clock: Clock = time.perf_counter,
) -> dict[str, dict[int, float]]:
    """Median milliseconds per call, timing every engine once per batch size in each round.

    Args:
        runs: engine name -> ``run(batch)``.
        batches: batch size -> batch.
        rounds: number of rounds.
        clock: seconds timer.

    Returns:
        Engine name -> batch size -> median ms.
    """
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in runs}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, run in runs.items():
                for b, batch in batches.items():
                    t0 = clock()
                    run(batch)
                    times[name][b].append((clock() - t0) * 1e3)
    return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in times.items()}


def add_ratios(rows: list[BenchRow], reference: str = BF16_ROW) -> list[BenchRow]:
    """Fill ``vs_bf16`` of every row with its time over the reference row's, per batch size.

    Args:
        rows: rows with ``ms`` filled.
        reference: the reference row's name.

    Returns:
        The same rows.
    """
    ref = next((r.ms for r in rows if r.engine == reference and r.ms), None)
    for r in rows:
        r.vs_bf16 = {b: ms / ref[b] for b, ms in r.ms.items() if ref and ref.get(b)}
    return rows


def load_task(name: str) -> Task:
    """Load a real task at the sizes a benchmark uses (``BENCH_TASKS``).

    Args:
        name: ``minilm`` or ``fashion``.

    Returns:
        The task.
    """
    from quantbalance.tasks import load

    check_names([name], BENCH_TASKS, "task")
    return load(name, **BENCH_TASKS[name])


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


# --------------------------------------------------------------------------- any ONNX file


def bench_onnx(
    path: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = (1,),
    dims: Mapping[str, int] | None = None,
    length: int = 128,
    rounds: int = 10,
    threads: int | None = None,
    clock: Clock = time.perf_counter,
) -> BenchResult:
    """Time an ONNX file in :class:`OrtSession` on generated inputs.

    Inputs follow the graph: a dynamic first dimension is the batch size, another dynamic
    dimension takes ``dims[name]`` or else ``length``; float inputs are standard normal, integer
    inputs zeros (a valid token id / index for any vocabulary), booleans True.

    Args:
        path: the ``.onnx`` file.
        batch_sizes: timed batch sizes.
        dims: sizes of named dynamic dimensions (e.g. ``{"sequence": 64}``).
        length: size of any other dynamic dimension.
        rounds: timed rounds.
        threads: ONNX Runtime intra-op threads (default: torch's setting).
        clock: seconds timer.

    Returns:
        A result with one row, ``ORT``; its note lists the inputs used.

    Raises:
        ConfigError: the file does not exist, or a size is invalid.
        CheckpointError: ONNX Runtime cannot load the file.
    """
    from quantbalance.deploy.ort import OrtSession

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--onnx {p}: no such file; accepted: an existing .onnx model file")
    if rounds < 1 or length < 1 or any(b < 1 for b in batch_sizes):
        raise ConfigError(
            f"rounds={rounds}, length={length}, batch sizes={list(batch_sizes)}; "
            "accepted: integers >= 1"
        )
    threads = threads or torch.get_num_threads()
    try:
        sess = OrtSession(p, intra_op_threads=threads)
    except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
        raise CheckpointError(
            f"{p} is not a model ONNX Runtime can load ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); accepted: a valid .onnx file"
        ) from exc
    spec = sess.session.get_inputs()
    batches = {b: onnx_inputs(spec, b, dims or {}, length) for b in batch_sizes}
    note = "; ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in batches[batch_sizes[0]].items())
    run = sess.session.run
    runs = {"ORT": lambda feeds: run(None, feeds)}
    for feeds in batches.values():
        runs["ORT"](feeds)
    times = time_interleaved(runs, batches, rounds, clock)
    row = BenchRow("ORT", times["ORT"], p.stat().st_size, note=f"inputs: {note}")
    return BenchResult(p.name, list(batch_sizes), rounds, [row], _env(threads))


def onnx_inputs(
    spec: Sequence[Any], batch: int, dims: Mapping[str, int], length: int
) -> dict[str, Any]:
    """Generated feeds for ONNX Runtime inputs (``session.get_inputs()``).

    Args:
        spec: the inputs (``name``, ``shape`` with ints, names or None, ``type``).
        batch: the size of a dynamic first dimension.
        dims: sizes of named dynamic dimensions.
        length: size of other dynamic dimensions.

    Returns:
        Input name -> numpy array.
    """
    import numpy as np

    from quantbalance.deploy.ort import _NP_TYPES

    rng = np.random.default_rng(0)
    feeds = {}
    for i in spec:
        shape = [
            d if isinstance(d, int) and d > 0 else batch if axis == 0 else dims.get(str(d), length)
            for axis, d in enumerate(i.shape)
        ]
        dtype = _NP_TYPES.get(i.type)
        if dtype is None:
            raise UnsupportedError(
                f"input {i.name!r} has type {i.type}; accepted: {', '.join(_NP_TYPES)}"
            )
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[i.name] = np.ones(shape, dtype) if dtype == np.bool_ else np.zeros(shape, dtype)
    return feeds


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
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            return batch
        reps = -(-n // batch.shape[0])
        return (batch.repeat(reps, *[1] * (batch.dim() - 1)) if reps > 1 else batch)[:n].clone()
    if isinstance(batch, Mapping):
        return {k: take(v, n) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(take(v, n) for v in batch)
    return batch


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


def _env(threads: int) -> dict[str, Any]:
    import onnxruntime

    env = {
        "threads": threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "date": dt.date.today().isoformat(),
        "load_avg": os.getloadavg()[0],
    }
    torchao = sys.modules.get("torchao")  # imported only when a torchao row was built
    if torchao is not None:
        env["torchao"] = getattr(torchao, "__version__", "?")
    return env
