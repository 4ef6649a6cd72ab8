"""How ``quantbalance search`` shows a result: the console, the result table, the verdict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from quantbalance.search.deployed import deployed_table


def make_console() -> Console:
    """A rich Console that stays readable when stdout is not a terminal (logs, ``make``).

    Rich falls back to 80 columns off a terminal, which truncates the result table; then 120
    columns are used (or ``$COLUMNS`` when set).

    Returns:
        The console.
    """
    c = Console()
    return c if c.is_terminal or "COLUMNS" in os.environ else Console(width=120)


console = make_console()


def results_table(res: Any) -> Table:
    """Float vs chosen vs presets, as a rich table.

    Args:
        res: the SearchResult.

    Returns:
        The table.
    """
    # deferred: report imports matplotlib: not at CLI start
    from quantbalance.report.html import size_txt

    m = res.metric
    t = Table(title=f"{m}: {res.budget.describe()} (ms: predicted latency)")
    for col in ("plan", "search", "drop", "held out", "size", "×smaller", "ms", "×faster"):
        t.add_column(col, no_wrap=True, justify="left" if col == "plan" else "right")
    f = res.float_point
    pct = res.budget.kind != "drop" or res.budget.relative
    for p in [f, res.chosen, *res.presets]:
        hold = (p.holdout_metrics or {}).get(m)
        drop = "-" if p.drop is None else (f"{100 * p.drop:.3f}%" if pct else f"{p.drop:.4g}")
        style = "bold green" if p is res.chosen else None
        t.add_row(
            f"{p.name}{' ★' if p is res.chosen else ''}",
            f"{(p.metrics or {}).get(m, float('nan')):.5f}",
            drop,
            "-" if hold is None else f"{hold:.5f}",
            size_txt(p.nbytes),
            f"{f.nbytes / p.nbytes:.2f}",
            f"{p.latency_ms:.2f}",
            f"{f.latency_ms / max(p.latency_ms, 1e-9):.2f}",
            style=style,
        )
    return t


def show_result(res: Any, path: Path, out: Path, con: Console | None = None) -> None:
    """Print the result table, the layer counts, the verdict and where the report is.

    Args:
        res: the SearchResult.
        path: the report's path.
        out: the output folder.
        con: the console (default the module console).
    """
    con = con or console
    con.print(results_table(res))
    if res.info.get("deployed"):
        con.print(deployed_table(res.info["deployed"]))
    data = res.info.get("data")
    if data:
        con.print(
            f"data: {data['source']}: {data['n_calib']} calibration, {data['n_eval']} evaluation "
            f"samples (seed {data['seed']}; {data['eval_dropped_as_duplicates']} evaluation "
            f"samples equal to calibration ones dropped); search on {data.get('search')}, held "
            f"out {data.get('holdout')}"
        )
    counts: dict[str, int] = {}
    for k in (res.chosen.choice or {}).values():
        counts[k] = counts.get(k, 0) + 1
    con.print("layers: " + ", ".join(f"{k} × {v}" for k, v in sorted(counts.items())))
    if res.info.get("coverage"):
        con.print(res.info["coverage"])
    unsupported = {n: why for n, why in res.info.get("left_float", {}).items() if why != "by plan"}
    if unsupported:
        con.print("[yellow]left float (no quantized form):[/] "
                  + "; ".join(f"{n}: {why}" for n, why in unsupported.items()))  # fmt: skip
    color = "green" if res.met_budget else "red"
    con.print(f"[{color}]{res.message}[/]")
    cache = res.info.get("cache") or {}
    if cache.get("text"):
        con.print(cache["text"], style="yellow" if cache.get("notes") else None)
    con.print(f"report: [bold]{path}[/]  plan: [bold]{out / 'plan.json'}[/]")
