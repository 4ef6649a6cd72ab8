"""``write_report``: one self-contained ``report.html`` (plots embedded) plus ``report.json``.

Sections (element ids): ``summary``, ``comparison`` (float vs chosen vs presets),
``pareto-bytes`` and ``pareto-latency``, ``sensitivity``, ``precision`` (chosen spec per layer
along the network), ``histograms`` (weights and activations of the most sensitive layers),
``layers`` (per-layer table) and ``evaluations`` (every evaluation the search ran).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

import quantbalance.report.plots as plots
from quantbalance.hardware import detect
from quantbalance.io import atomic_write_text
from quantbalance.report.histograms import histograms

log = logging.getLogger(__name__)

CSS = """
* { box-sizing: border-box }
body { margin: 0; font: 14px/1.5 -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  color: #1f2d3d; background: #f4f6f9 }
header { background: linear-gradient(120deg, #1e3799, #0c2461); color: #fff; padding: 26px 40px }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600 }
header p { margin: 0; opacity: .85 }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px }
section { background: #fff; border-radius: 10px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
  padding: 18px 22px; margin: 18px 0 }
h2 { font-size: 17px; margin: 0 0 12px; color: #0c2461 }
.cards { display: flex; flex-wrap: wrap; gap: 14px }
.card { flex: 1 1 170px; background: #f8fafc; border: 1px solid #e3e8ef; border-radius: 8px;
  padding: 10px 14px }
.card .v { font-size: 20px; font-weight: 600 }
.card .k { font-size: 12px; color: #5a6b7d; text-transform: uppercase; letter-spacing: .04em }
.ok { color: #10ac84 } .bad { color: #e74c3c } .k2 { color: #5a6b7d; font-size: 13px }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600 }
.badge.ok { background: #e3f9f1 } .badge.bad { background: #fdecea }
table { border-collapse: collapse; width: 100%; font-size: 13px }
th, td { padding: 5px 9px; border-bottom: 1px solid #edf0f4; text-align: right;
  white-space: nowrap }
th { background: #f0f3f8; color: #34495e; position: sticky; top: 0; white-space: normal;
  vertical-align: bottom }
td:first-child, th:first-child { text-align: left }
tr:nth-child(even) td { background: #fafbfd }
tr.chosen td { background: #fff4e5; font-weight: 600 }
.scroll { max-height: 460px; overflow: auto }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 14px }
img { max-width: 100%; height: auto }
.note { color: #5a6b7d; font-size: 12.5px; margin: 6px 0 0 }
.msg { padding: 10px 14px; border-radius: 8px; background: #eef5ff;
  border-left: 4px solid #2e86de; margin-top: 12px }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr } }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _f(x: Any, fmt: str = ".4f") -> str:
    return "–" if x is None else format(x, fmt)


def size_txt(n: float) -> str:
    """Bytes as text: ``812 B``, ``12.4 kB``, ``22.86 MB``."""
    if n < 1e3:
        return f"{n:.0f} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def write_report(
    result: Any,
    out_dir: str | Path,
    model: nn.Module | None = None,
    calib_data: Any = None,
    top_k: int = 4,
) -> Path:
    """Write ``report.html`` (self-contained) and ``report.json`` into ``out_dir``.

    Args:
        result: a ``SearchResult`` or its ``to_dict()`` (e.g. a loaded ``report.json``).
        out_dir: the folder (created).
        model: the float model, for the histograms of the ``top_k`` most sensitive layers
            (without it, histograms already in ``result`` are used, else the section says so).
        calib_data: calibration batches for the activation histograms.
        top_k: how many of the most sensitive layers get histograms.

    Returns:
        The path of ``report.html``.
    """
    r = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    r.setdefault("machine", detect().to_dict())  # a loaded report keeps its own machine
    out = Path(out_dir)
    if model is not None and "histograms" not in r:
        ranked = result.sensitivity.ranking() if hasattr(result, "sensitivity") else _rank(r)
        r["histograms"] = histograms(model, calib_data, ranked[:top_k])
    atomic_write_text(out / "report.json", json.dumps(r, indent=1))
    page = render(r)
    path = atomic_write_text(out / "report.html", page)
    log.info("report written to %s", path)
    return path


def _rank(r: dict[str, Any]) -> list[str]:
    s = r["sensitivity"]
    ref = s["reference"][s["metric"]]
    sign = 1.0 if s["higher_is_better"] else -1.0

    def worst(n: str) -> float:
        return max(sign * (ref - e["metrics"][s["metric"]]) for e in s["entries"][n].values())

    return sorted(s["layers"], key=worst, reverse=True)


def _drop_txt(d: float | None, r: dict[str, Any]) -> str:
    if d is None:
        return "–"
    b = r["budget"]
    return f"{100 * d:.3f} %" if b["kind"] != "drop" or b["relative"] else f"{d:.4g}"


def _deployed_card(d: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The measured deployed latency of the chosen Plan (``search.deployed``), if taken."""
    if not d:
        return []
    return [(
        "measured latency (deployed)",
        f"{d['chosen_ms']:.1f} ms <span class=k2>({d['float_ms'] / d['chosen_ms']:.2f}× float "
        f"{d['float_ms']:.1f} ms; predicted / measured "
        f"{d['predicted_chosen_ms'] / d['chosen_ms']:.2f}; {_e(d['engine'])} on "
        f"{_e(d['cpu'])}, {_e(d['isa'])}, {d['threads']} threads)</span>",
    )]  # fmt: skip


def _summary(r: dict[str, Any]) -> str:
    c, f, m = r["chosen"], r["float"], r["metric"]
    ok = r["met_budget"]
    hold = c.get("holdout_metrics") or {}
    cards = [
        ("budget", _e(_budget_txt(r))),
        (
            "result",
            f'<span class="badge {"ok" if ok else "bad"}">{"met" if ok else "not met"}</span>',
        ),
        (
            "size",
            f"{size_txt(c['nbytes'])} <span class=k2>({f['nbytes'] / c['nbytes']:.2f}×"
            " smaller)</span>",
        ),
        (
            "predicted latency",
            f"{c['latency_ms']:.1f} ms <span class=k2>"
            f"({f['latency_ms'] / max(c['latency_ms'], 1e-9):.2f}×)</span>",
        ),
        *_deployed_card(r.get("info", {}).get("deployed")),
        (f"{m} (search)", f"{_f((c.get('metrics') or {}).get(m))}"),
        (f"{m} (held out)", f"{_f(hold.get(m))}"),
    ]
    body = "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>'
        for k, v in cards
    )
    return (
        f'<section id="summary"><h2>Summary</h2><div class="cards">{body}</div>'
        f'<div class="msg">{_e(r["message"])}{_vs_presets(r)}</div></section>'
    )


def _vs_presets(r: dict[str, Any]) -> str:
    """One sentence: the chosen Plan against the best uniform presets meeting the budget."""
    ok = [p for p in r["presets"] if _meets(r, p)]
    if not ok:
        return "<br>No uniform preset meets this budget."
    c = r["chosen"]
    small = min(ok, key=lambda p: p["nbytes"])
    fast = min(ok, key=lambda p: p["latency_ms"])
    return (
        f"<br>Against the smallest uniform preset meeting the budget ({_e(small['name'])}): "
        f"{100 * (1 - c['nbytes'] / small['nbytes']):.1f} % smaller; against the fastest "
        f"({_e(fast['name'])}): {100 * (1 - c['latency_ms'] / fast['latency_ms']):.1f} % faster "
        "(negative: larger / slower)."
    )


def _budget_txt(r: dict[str, Any]) -> str:
    b = r["budget"]
    if b["kind"] == "drop":
        amt = f"{100 * b['max_drop']:g} %" if b["relative"] else f"{b['max_drop']:g}"
        return f"{r['metric']} drop ≤ {amt}"
    if b["kind"] == "bytes":
        return f"size ≤ {size_txt(b['max_bytes'])}"
    return f"latency ≤ {b['max_latency_ms']:g} ms"


def _comparison(r: dict[str, Any]) -> str:
    m, f = r["metric"], r["float"]
    head = (
        "<tr><th>model</th><th>kind</th><th>"
        + _e(m)
        + " (search)</th><th>drop</th><th>"
        + _e(m)
        + " (held out)</th><th>drop (held out)</th><th>size</th><th>compression"
        "</th><th>latency ms</th><th>speed-up</th><th>meets budget</th></tr>"
    )
    rows = []
    for p in [f, r["chosen"], *r["presets"]]:
        hm = (p.get("holdout_metrics") or {}).get(m)
        meets = _meets(r, p)
        badge = (
            "–"
            if meets is None
            else (
                f'<span class="badge {"ok" if meets else "bad"}">{"yes" if meets else "no"}</span>'
            )
        )
        cls = ' class="chosen"' if p is r["chosen"] else ""
        rows.append(
            f"<tr{cls}><td>{_e(p['name'])}</td><td>{_e(p['kind'])}</td>"
            f"<td>{_f((p.get('metrics') or {}).get(m))}</td><td>{_drop_txt(p.get('drop'), r)}</td>"
            f"<td>{_f(hm)}</td><td>{_drop_txt(p.get('holdout_drop'), r)}</td>"
            f"<td>{size_txt(p['nbytes'])}</td><td>{f['nbytes'] / p['nbytes']:.2f}×</td>"
            f"<td>{p['latency_ms']:.2f}</td><td>{f['latency_ms'] / max(p['latency_ms'], 1e-9):.2f}×"
            f"</td><td>{badge}</td></tr>"
        )
    dom = r.get("dominated") or []
    note = (
        "No uniform preset strictly dominates a measured point of the search's own front."
        if not dom
        else "Points of the search's own front strictly dominated by a uniform preset: "
        + ", ".join(f"{d['point']} by {d['preset']} ({d['axis']})" for d in dom)
    )
    return _table_section(
        "comparison", "Float vs chosen vs uniform presets", head, rows,
        f'<p class="note">Drops are judged on the held-out split when there is one. Latency: '
        f"measured per-layer kernels ({_e(r['costs']['engine'])}) plus the measured rest of "
        f"the model. {_e(note)}</p>",
    )  # fmt: skip


def _meets(r: dict[str, Any], p: dict[str, Any]) -> bool | None:
    b = r["budget"]
    if b["kind"] == "bytes":
        return p["nbytes"] <= b["max_bytes"]
    if b["kind"] == "latency":
        return p["latency_ms"] <= b["max_latency_ms"]
    d = p.get("holdout_drop") if p.get("holdout_drop") is not None else p.get("drop")
    return None if d is None else d <= b["max_drop"] + 1e-12


def _layers(r: dict[str, Any]) -> str:
    s, costs = r["sensitivity"], r["costs"]
    keys = sorted({k for e in s["entries"].values() for k in e if k != "float"})
    choice = r["chosen"]["choice"] or {}
    ref = s["reference"][s["metric"]]
    sign = 1.0 if s["higher_is_better"] else -1.0
    head = (
        "<tr><th>layer</th><th>type</th><th>chosen</th><th>bytes</th><th>latency ms</th>"
        + "".join(f"<th>drop {_e(k)}</th>" for k in keys)
        + "<th>out SQNR dB*</th><th>Fisher dB*</th></tr>"
    )
    rows = []
    for n, t in s["layers"].items():
        k = choice.get(n, "float")
        cells = []
        for key in keys:
            e = s["entries"][n].get(key)
            mark = "" if not e or e["measured"] else "~"
            cells.append(
                "<td>–</td>"
                if not e
                else f"<td>{mark}{sign * (ref - e['metrics'][s['metric']]):.2e}</td>"
            )
        e = s["entries"][n].get(k) or {}
        rows.append(
            f"<tr><td>{_e(n)}</td><td>{_e(t)}</td><td>{_e(k)}</td>"
            f"<td>{costs['nbytes'][n][k]:,}</td><td>{costs['latency_ms'][n][k]:.3f}</td>"
            + "".join(cells)
            + f"<td>{_f(e.get('sqnr_db'), '.1f')}</td>"
            f"<td>{_f(e.get('fisher_db'), '.1f')}</td></tr>"
        )
    return _table_section(
        "layers", "Per layer", head, rows,
        '<p class="note">Drop: metric change with only that layer quantized (~ = estimated from '
        "the proxy). *Proxies of the chosen spec.</p>",
    )  # fmt: skip


def _evaluations(r: dict[str, Any]) -> str:
    m = r["metric"]
    rows = [
        f"<tr><td>{i + 1}</td><td>{_e(e['purpose'])}</td><td>{_e(e['plan'])}</td>"
        f"<td>{_e(e['split'])}</td><td>{_f(e['metrics'].get(m))}</td><td>{e['bytes']:,}</td>"
        f"<td>{_f(e.get('seconds'), '.1f')}</td><td>{'yes' if e['cached'] else 'no'}</td></tr>"
        for i, e in enumerate(r["log"])
    ]
    t = r.get("timings", {})
    times = ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
    cache = (r.get("info", {}).get("cache") or {}).get("text")
    cache_html = f'<p class="note" id="cache">{_e(cache)}</p>' if cache else ""
    head = (
        f"<tr><th>#</th><th>purpose</th><th>plan</th><th>split</th><th>{_e(m)}</th><th>bytes</th>"
        "<th>seconds</th><th>cached</th></tr>"
    )
    note = f'<p class="note">Phases: {_e(times)}.</p>{cache_html}'
    return _table_section("evaluations", "Evaluations", head, rows, note)


def _table_section(sid: str, title: str, head: str, rows: list[str], note: str) -> str:
    """A report section: its title, a scrolling table (``head``, ``rows``) and ``note`` (HTML)."""
    return (
        f'<section id="{sid}"><h2>{title}</h2><div class="scroll"><table>{head}{"".join(rows)}'
        f"</table></div>{note}</section>"
    )


def _coverage_txt(info: dict[str, Any]) -> str:
    """The "quantized N of M weight layers" line and the layers left float without a form."""
    if not info.get("coverage"):
        return ""
    bad = {n: why for n, why in info.get("left_float", {}).items() if why != "by plan"}
    extra = "; left float (no quantized form): " + "; ".join(f"{n}: {w}" for n, w in bad.items())
    return f'<p id="coverage">{_e(info["coverage"] + (extra if bad else ""))}</p>'


def render(r: dict[str, Any]) -> str:
    """The HTML page of a result dict (see the module doc for its sections).

    Args:
        r: ``SearchResult.to_dict()`` (optionally with ``histograms``).

    Returns:
        The page.
    """
    info = r.get("info", {})
    hist = r.get("histograms")
    hist_html = (
        _img(plots.histogram_plot(hist), "histograms")
        if hist
        else '<p class="note">No model was given to the report: no histograms.</p>'
    )
    parts = [
        _summary(r),
        _comparison(r),
        '<section><h2>Pareto fronts</h2><div class="grid2">'
        f'<div id="pareto-bytes">{_img(plots.pareto_plot(r, "bytes"), "metric vs size")}</div>'
        f'<div id="pareto-latency">{_img(plots.pareto_plot(r, "latency"), "metric vs latency")}'
        '</div></div><p class="note">Filled: evaluated with the real eval function; hollow: '
        "predicted from single-layer sensitivities. Crosses: uniform presets.</p></section>",
        '<section id="sensitivity"><h2>Per-layer sensitivity</h2>'
        f"{_img(plots.sensitivity_plot(r), 'sensitivity')}</section>",
        '<section id="precision"><h2>Chosen precision along the network</h2>'
        f"{_img(plots.precision_plot(r), 'precision per layer')}</section>",
        f'<section id="histograms"><h2>Most sensitive layers: weights and inputs</h2>{hist_html}'
        "</section>",
        _layers(r),
        _evaluations(r),
    ]
    title = f"quantbalance search — {info.get('task', 'model')}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}'
        f'</title><meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{CSS}</style></head><body><header><h1>{_e(title)}</h1><p>"
        f"{_e(_budget_txt(r))} · {info.get('layers', '?')} layers · algorithm "
        f"{_e(info.get('algorithm', 'rtn'))} · latency engine {_e(r['costs']['engine'])}"
        f"</p>{_coverage_txt(info)}</header><main>{''.join(parts)}</main></body></html>"
    )
