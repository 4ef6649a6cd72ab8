"""The report's figures, drawn with matplotlib (Agg) from a search result's JSON data.

Every function takes the dict of ``SearchResult.to_dict()`` (so a report can be re-drawn from
``report.json``) and returns a PNG as base64 text, ready for an ``<img src="data:...">``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLORS = {
    "float": "#7f8c8d",
    "int8-weight": "#2e86de",
    "w8a8": "#10ac84",
    "w8a8-dynamic": "#1dd1a1",
    "w4-g128": "#f39c12",
    "w4a8": "#e67e22",
    "w4": "#f6b93b",
    "w3": "#e55039",
    "nf4": "#9b59b6",
    "w3-g128": "#c0392b",
}
_PALETTE = ["#34495e", "#16a085", "#8e44ad", "#d35400", "#27ae60", "#2980b9"]


def color(key: str) -> str:
    """A stable colour per candidate key."""
    return COLORS.get(key, _PALETTE[sum(map(ord, key)) % len(_PALETTE)])


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _metric_value(r: dict[str, Any], p: dict[str, Any]) -> float:
    m = r["metric"]
    if p.get("metrics") and m in p["metrics"]:
        return float(p["metrics"][m])
    ref = r["reference"][m]
    d = p.get("predicted_drop") or 0.0
    d = d * abs(ref) if r["budget"].get("relative", True) and r["budget"]["kind"] == "drop" else d
    return ref - d if r["higher_is_better"] else ref + d


def _y_range(r: dict[str, Any]) -> tuple[float, float]:
    """Metric range worth showing: around the budget (drop budgets) or the measured Plans."""
    ref, sign = r["reference"][r["metric"]], 1.0 if r["higher_is_better"] else -1.0
    b = r["budget"]
    if b["kind"] == "drop":
        span = b["max_drop"] * (abs(ref) if b["relative"] else 1.0)
    else:
        pts = [r["chosen"], *[p for p in r["front"] if p["measured"]]]
        span = max([sign * (ref - _metric_value(r, p)) for p in pts] + [0.0]) / 2
    span = span if span > 0 else max(abs(ref) * 1e-3, 1e-9)
    lo, hi = ref - sign * 4.5 * span, ref + sign * 0.6 * span
    return (lo, hi) if lo < hi else (hi, lo)


def pareto_plot(r: dict[str, Any], axis: str) -> str:
    """Metric vs bytes (``axis="bytes"``) or vs latency (``"latency"``).

    Searched Plans: filled when measured, hollow when only predicted. The measured front
    (presets and float included when they are on it) is joined by a line. Uniform presets:
    labelled crosses. The chosen Plan: a red star. Plans far outside the interesting range are
    drawn on the edge (triangles) with their value.

    Args:
        r: the result dict.
        axis: ``bytes`` or ``latency``.

    Returns:
        Base64 PNG.
    """
    lo, hi = _y_range(r)

    def x_of(p: dict[str, Any]) -> float:
        return p["nbytes"] / 1e6 if axis == "bytes" else p["latency_ms"]

    def y_of(p: dict[str, Any]) -> float:
        return min(max(_metric_value(r, p), lo), hi)

    def clipped(p: dict[str, Any]) -> bool:
        return not lo <= _metric_value(r, p) <= hi

    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    front = r["front"]
    pred = [p for p in front if not p["measured"]]
    meas = [p for p in front if p["measured"]]
    styles: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
        (pred, {"s": 28, "facecolors": "none", "edgecolors": "#95a5a6",
                "label": "predicted (not evaluated)"}),
        (meas, {"s": 34, "color": "#2e86de", "label": "searched, measured", "zorder": 3}),
    ]  # fmt: skip
    for points, style in styles:
        ax.scatter([x_of(p) for p in points], [y_of(p) for p in points], **style)
    everyone = [*meas, *r["presets"], r["float"]]
    line = sorted((p for p in everyone if p.get("on_front", {}).get(axis)), key=x_of)
    if line:
        ax.plot(
            [x_of(p) for p in line], [y_of(p) for p in line], color="#2e86de", lw=1.2, alpha=0.7
        )
    _plot_presets(ax, r, x_of, y_of, clipped)
    f = r["float"]
    ax.scatter(x_of(f), y_of(f), marker="D", s=46, color="#2c3e50", label="float", zorder=4)
    c = r["chosen"]
    ax.scatter(
        x_of(c),
        y_of(c),
        marker="*",
        s=260,
        color="#e74c3c",
        edgecolors="white",
        linewidths=0.8,
        label="chosen",
        zorder=5,
        clip_on=False,
    )
    _finish_axes(ax, r, axis, (lo, hi))
    return _png(fig)


def _finish_axes(ax: Any, r: dict[str, Any], axis: str, ylim: tuple[float, float]) -> None:
    """Budget line, limits, labels, grid, legend and title of a Pareto plot."""
    _budget_line(ax, r, axis)
    ax.set_ylim(*ylim)
    ax.set_xlabel("model size (MB)" if axis == "bytes" else "predicted latency (ms)")
    ax.set_ylabel(f"{r['metric']} (search split)")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_title(f"{r['metric']} vs {'size' if axis == 'bytes' else 'latency'}", fontsize=11)


def _plot_presets(
    ax: Any,
    r: dict[str, Any],
    x_of: Callable[[dict[str, Any]], float],
    y_of: Callable[[dict[str, Any]], float],
    clipped: Callable[[dict[str, Any]], bool],
) -> None:
    """Uniform presets as labelled crosses; those outside the range as edge triangles."""
    n_edge = 0
    for p in r["presets"]:
        edge = clipped(p)
        n_edge += edge
        ax.scatter(
            x_of(p),
            y_of(p),
            marker="v" if edge else "X",
            s=70,
            color=color(p["name"]),
            edgecolors="white",
            linewidths=0.6,
            zorder=4,
            clip_on=False,
        )
        label = f"{p['name']} ({_metric_value(r, p):.3g})" if edge else p["name"]
        ax.annotate(
            label,
            (x_of(p), y_of(p)),
            textcoords="offset points",
            xytext=(5, 2 + 10 * n_edge if edge else -11),
            fontsize=8,
            color="#444",
        )


def _budget_line(ax: Any, r: dict[str, Any], axis: str) -> None:
    b = r["budget"]
    style = {"color": "#e74c3c", "ls": "--", "lw": 1, "alpha": 0.8, "label": "budget"}
    if b["kind"] == "drop":
        ref = r["reference"][r["metric"]]
        d = b["max_drop"] * (abs(ref) if b["relative"] else 1.0)
        ax.axhline(ref - d if r["higher_is_better"] else ref + d, **style)
    elif b["kind"] == "bytes" and axis == "bytes":
        ax.axvline(b["max_bytes"] / 1e6, **style)
    elif b["kind"] == "latency" and axis == "latency":
        ax.axvline(b["max_latency_ms"], **style)


def _short(name: str) -> str:
    parts = name.split(".")
    return ".".join(p for p in parts if p not in ("bert", "encoder", "attention", "model"))[-28:]


def sensitivity_plot(r: dict[str, Any]) -> str:
    """Per-layer drop of each candidate when that layer alone is quantized (symlog bars).

    Args:
        r: the result dict.

    Returns:
        Base64 PNG.
    """
    s = r["sensitivity"]
    layers = list(s["layers"])
    keys = sorted({k for n in layers for k in s["entries"][n] if k != "float"})
    ref = s["reference"][s["metric"]]
    sign = 1.0 if s["higher_is_better"] else -1.0
    width = 0.8 / max(len(keys), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.32 * len(layers) + 2), 4.2))
    x = np.arange(len(layers))
    for i, k in enumerate(keys):
        vals = []
        for n in layers:
            e = s["entries"][n].get(k)
            vals.append(sign * (ref - e["metrics"][s["metric"]]) if e else math.nan)
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, label=k, color=color(k))
    ax.set_yscale("symlog", linthresh=_linthresh(s, layers, keys, ref, sign))
    ax.set_xticks(x, [_short(n) for n in layers], rotation=90, fontsize=7)
    ax.set_ylabel(f"{s['metric']} drop (one layer quantized)")
    ax.axhline(0, color="#333", lw=0.6)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(fontsize=8, ncol=min(len(keys), 5))
    return _png(fig)


def _linthresh(s: dict, layers: list[str], keys: list[str], ref: float, sign: float) -> float:
    vals = [
        abs(sign * (ref - e["metrics"][s["metric"]]))
        for n in layers
        for k in keys
        if (e := s["entries"][n].get(k))
    ]
    pos = [v for v in vals if v > 0]
    return max(min(pos), 1e-9) if pos else 1e-6


def precision_plot(r: dict[str, Any]) -> str:
    """The chosen spec of every layer along the network: bits per weight, coloured by spec.

    Args:
        r: the result dict.

    Returns:
        Base64 PNG.
    """
    layers = list(r["sensitivity"]["layers"])
    choice = r["chosen"]["choice"] or {}
    nbytes = r["costs"]["nbytes"]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.32 * len(layers) + 2), 3.2))
    seen = set()
    for i, n in enumerate(layers):
        k = choice.get(n, "float")
        numel = nbytes[n]["float"] / 4
        bits = 8 * nbytes[n][k] / max(numel, 1)
        ax.bar(i, bits, color=color(k), label=None if k in seen else k, edgecolor="white")
        seen.add(k)
    ax.set_xticks(range(len(layers)), [_short(n) for n in layers], rotation=90, fontsize=7)
    ax.set_ylabel("bits per weight (stored)")
    ax.set_ylim(0, 34)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(fontsize=8, ncol=min(len(seen), 6), loc="upper right")
    return _png(fig)


def histogram_plot(hists: dict[str, dict[str, Any]]) -> str:
    """Weight and input-activation histograms of the given layers (log counts).

    Args:
        hists: layer -> ``{"weight": {"edges", "counts"}, "activation": {...} or None}``.

    Returns:
        Base64 PNG.
    """
    n = max(len(hists), 1)
    fig, axes = plt.subplots(n, 2, figsize=(9, 2.1 * n), squeeze=False)
    for row, (layer, h) in enumerate(hists.items()):
        for col, what in enumerate(("weight", "activation")):
            ax = axes[row][col]
            d = h.get(what)
            if d:
                edges = np.asarray(d["edges"])
                ax.stairs(
                    np.asarray(d["counts"]),
                    edges,
                    fill=True,
                    color="#2e86de" if what == "weight" else "#10ac84",
                    alpha=0.85,
                )
                ax.set_yscale("log")
                ax.set_ylim(bottom=0.7)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{_short(layer)} — {what}", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)
