"""Benchmark rows and results, interleaved timing with medians, and the run's conditions."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from quantbalance.errors import ConfigError

BF16_ROW = "torch bf16"  # the reference row of the ``vs_bf16`` ratios
#: Rows that run the float model: the fastest of them (per batch size) is the reference of the
#: ``vs_float`` ratios, the same meaning on every machine (bf16 is emulated on some CPUs).
FLOAT_ROWS = (
    "float torch",
    "torch bf16",
    "torch bf16 + compile",
    "ORT float",
    "float torch engine",
)


@dataclass
class BenchRow:
    """One engine's results.

    Attributes:
        engine: the row name.
        ms: batch size -> median milliseconds per call.
        nbytes: bytes of the deployed file (None for a skipped row).
        metrics: the task's metrics of this engine's outputs.
        vs_bf16: batch size -> ``ms / ms of torch bf16`` (empty without a bf16 row).
        vs_float: batch size -> ``ms / ms of the fastest float row`` (see ``FLOAT_ROWS``).
        note: what the engine really did.
        skipped: why the row has no numbers ("" when it has).
    """

    engine: str
    ms: dict[int, float] = field(default_factory=dict)
    nbytes: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    vs_bf16: dict[int, float] = field(default_factory=dict)
    vs_float: dict[int, float] = field(default_factory=dict)
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
        float_reference: batch size -> the fastest float row (the ``vs_float`` reference).
    """

    name: str
    batch_sizes: list[int]
    rounds: int
    rows: list[BenchRow]
    env: dict[str, Any] = field(default_factory=dict)
    float_reference: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.float_reference = self.float_reference or fastest_float(self.rows)

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
            d["vs_float"] = {str(k): v for k, v in r.vs_float.items()}
            rows.append(d)
        return {
            "name": self.name,
            "batch_sizes": self.batch_sizes,
            "rounds": self.rounds,
            "env": self.env,
            "float_reference": {str(k): v for k, v in self.float_reference.items()},
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
            *[f"b{b} vs fastest float" for b in self.batch_sizes],
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
                *[fmt_num(r.vs_float.get(b), ".2f", "x") for b in self.batch_sizes],
                fmt_num(None if r.nbytes is None else r.nbytes / 1e6, ".2f"),
                *[fmt_num(r.metrics.get(k), ".5g") for k in names],
                (r.skipped and f"skipped: {r.skipped}") or r.note,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        ref = ", ".join(f"b{b}: {n}" for b, n in self.float_reference.items())
        return "\n".join(lines) + (f"\n\nfastest float engine ({ref})" if ref else "")


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


def add_ratios(rows: list[BenchRow], reference: str = BF16_ROW) -> list[BenchRow]:
    """Fill ``vs_bf16`` (time over the reference row's) and ``vs_float`` (over the fastest
    float row's) of every row, per batch size.

    Args:
        rows: rows with ``ms`` filled.
        reference: the reference row's name.

    Returns:
        The same rows.
    """
    ref = next((r.ms for r in rows if r.engine == reference and r.ms), None)
    fast = fastest_float(rows)
    best = {b: next(r.ms[b] for r in rows if r.engine == n) for b, n in fast.items()}
    for r in rows:
        r.vs_bf16 = {b: ms / ref[b] for b, ms in r.ms.items() if ref and ref.get(b)}
        r.vs_float = {b: ms / best[b] for b, ms in r.ms.items() if best.get(b)}
    return rows


def fastest_float(rows: list[BenchRow]) -> dict[int, str]:
    """The fastest float row per batch size (``FLOAT_ROWS``), by median time.

    Args:
        rows: rows with ``ms`` filled.

    Returns:
        Batch size -> row name (empty when no float row was timed).
    """
    out: dict[int, str] = {}
    for r in rows:
        if r.engine not in FLOAT_ROWS:
            continue
        for b, ms in r.ms.items():
            cur = out.get(b)
            if cur is None or ms < next(x.ms[b] for x in rows if x.engine == cur):
                out[b] = r.engine
    return out


def env_info(threads: int) -> dict[str, Any]:
    """The conditions of a run, stored with its result.

    Args:
        threads: the threads the engines used.

    Returns:
        Threads, machine, torch / ONNX Runtime (/ torchao) versions, date, load average.
    """
    import onnxruntime

    from quantbalance.hardware import detect

    env = {
        "threads": threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "date": dt.date.today().isoformat(),
        "load_avg": os.getloadavg()[0],
        "hardware": detect().to_dict(),
    }
    torchao = sys.modules.get("torchao")  # imported only when a torchao row was built
    if torchao is not None:
        env["torchao"] = getattr(torchao, "__version__", "?")
    return env
