"""``quantbalance bench``: deployed latency, file bytes and task metrics, engine by engine.

Registered in ``cli/main.py`` with ``app.command("bench")(bench_command)``. The work is done by
``quantbalance.bench.benchmark``; this module parses options and prints the table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from quantbalance.bench.result import fmt_num
from quantbalance.cli import loading
from quantbalance.cli.fail import fail
from quantbalance.errors import ConfigError, QuantBalanceError
from quantbalance.io import atomic_write_text
from quantbalance.tasks import load_for_bench

console = Console()
# Kept here (not imported from bench.engines) so that `--help` stays fast; a test checks it.
ENGINES_HELP = (
    "comma-separated, default all: float, bf16, bf16-compile, torchao, ort-float, ort-dynamic, "
    "ort-static, qb-torch, qb-ort"
)


def parse_sizes(values: list[str] | None, what: str = "--batch") -> list[int] | None:
    """Batch sizes from repeated and/or comma-separated option values.

    Args:
        values: the option's values (``["1,32"]`` or ``["1", "32"]``), or None.
        what: the option's name, for the error message.

    Returns:
        The sizes, or None when none were given.

    Example:
        >>> parse_sizes(["1,32", "64"])
        [1, 32, 64]
    """
    if not values:
        return None
    parts = [p.strip() for v in values for p in v.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"{what} {','.join(values)!r}; accepted: positive integers, e.g. 1,32")
    return [int(p) for p in parts]


def parse_dims(values: list[str] | None) -> dict[str, int]:
    """``NAME=SIZE`` pairs (``--dim sequence=64``) as a dict.

    Args:
        values: the option's values, or None.

    Returns:
        Dimension name -> size.

    Example:
        >>> parse_dims(["length=64"])
        {'length': 64}
    """
    dims: dict[str, int] = {}
    for v in values or []:
        name, _, size = v.partition("=")
        if not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise ConfigError(f"--dim {v!r}; accepted: NAME=SIZE with a positive SIZE")
        dims[name.strip()] = int(size)
    return dims


def _names(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def result_table(result: Any) -> Table:
    """A benchmark result as a rich table.

    Args:
        result: a ``BenchResult``.

    Returns:
        The table: medians per batch size, ratio to the fastest float engine, file size,
        metrics, notes.
    """
    sizes = result.batch_sizes
    metrics = sorted({k for r in result.rows for k in r.metrics})
    with_ratio = any(r.vs_float for r in result.rows)
    env = result.env
    t = Table(
        title=f"{result.name}: median of {result.rounds} interleaved rounds, "
        f"{env.get('threads')} threads (load {env.get('load_avg', 0):.1f})"
    )
    t.add_column("engine", no_wrap=True)
    for b in sizes:
        t.add_column(f"b{b} ms", justify="right")
    for b in sizes if with_ratio else []:
        t.add_column(f"b{b} ×float", justify="right")
    t.add_column("file", justify="right")
    for m in metrics:
        t.add_column(m, justify="right")
    t.add_column("note", overflow="fold")
    if result.float_reference:
        ref = ", ".join(f"b{b} {n}" for b, n in result.float_reference.items())
        t.caption = f"×float: time over the fastest float engine on this machine ({ref})"
    for r in result.rows:
        note = f"[red]skipped: {r.skipped}[/]" if r.skipped else r.note
        t.add_row(
            r.engine,
            *[fmt_num(r.ms.get(b), ".2f") for b in sizes],
            *[fmt_num(r.vs_float.get(b), ".2f", "x") for b in (sizes if with_ratio else [])],
            _size(r.nbytes),
            *[fmt_num(r.metrics.get(m), ".5g") for m in metrics],
            note,
        )
    return t


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def bench_command(
    task: Annotated[str | None, typer.Option("--task", help="minilm or fashion")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="module:factory returning a Task or tuple")
    ] = None,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="time any ONNX file")] = None,
    engines: Annotated[str | None, typer.Option("--engines", help=ENGINES_HELP)] = None,
    presets: Annotated[
        str, typer.Option("--presets", help="quantbalance presets for the qb-* engines")
    ] = "w8a8,int8-weight,w4-g128",
    batch: Annotated[
        list[str] | None, typer.Option("--batch", help="batch size(s), e.g. 1,32 (repeatable)")
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="interleaved timed rounds")] = 5,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads")] = None,
    dim: Annotated[
        list[str] | None, typer.Option("--dim", help="--onnx: NAME=SIZE of a dynamic dimension")
    ] = None,
    length: Annotated[
        int, typer.Option("--length", help="--onnx: size of other dynamic dimensions")
    ] = 128,
    out: Annotated[Path | None, typer.Option("--out", help="write the result as JSON")] = None,
) -> None:
    """Time deployed engines (torch, torchao, ONNX Runtime, quantbalance presets) on a task."""
    # deferred: bench.benchmark and bench.onnx_file import onnx/onnxruntime (slow)
    from quantbalance.bench import benchmark as bm
    from quantbalance.bench.onnx_file import bench_onnx

    try:
        if sum(x is not None for x in (task, model, onnx)) != 1:
            raise ConfigError("give exactly one of --task minilm|fashion, --model, --onnx PATH")
        sizes = parse_sizes(batch)
        if onnx is not None:
            with console.status(f"timing {onnx}"):
                result = bench_onnx(
                    onnx,
                    batch_sizes=sizes or [1],
                    dims=parse_dims(dim),
                    length=length,
                    rounds=rounds,
                    threads=threads,
                )
        else:
            names = _names(engines) if engines else list(bm.DEFAULT_ENGINES)
            bm.check_names(names, bm.ENGINES, "engine")
            bm.check_names(_names(presets), bm.ALL_PRESETS, "preset")
            with console.status("loading model and data"):
                src = load_for_bench(task) if task else _from_factory(model)
            with console.status(f"building and timing {len(names)} engines"):
                result = bm.benchmark(
                    src,
                    engines=names,
                    presets=_names(presets),
                    batch_sizes=sizes,
                    rounds=rounds,
                    threads=threads,
                )
    except QuantBalanceError as e:
        fail(e, console)
    console.print(result_table(result))
    if out is not None:
        path = atomic_write_text(out, json.dumps(result.to_dict(), indent=1))
        console.print(f"result written to [bold]{path}[/]")


def _from_factory(spec: str | None) -> Any:
    src = loading.load_source(model=spec)
    if src.example_inputs is None:
        raise ConfigError(f"--model {spec}: no example batch; return (model, calib_data[, eval])")
    if src.evaluate_fn is loading._no_eval:  # no eval function: no metric columns
        return dataclasses.replace(src, evaluate_fn=lambda _: {})
    return src
