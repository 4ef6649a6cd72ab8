"""``make demo``: the balance search on the bundled default task (MiniLM), as the CLI runs it.

1. One real weight matrix (MiniLM's first FFN layer, read from the model's safetensors file)
   under several schemes: bits per weight, bytes, SQNR (a few seconds).
2. ``quantbalance search --task minilm --max-drop 1% --n-sensitivity 32 --out out/demo``:
   per-layer precision for the smallest model whose mean cosine to the float encoder drops by
   at most 1 %, judged on held-out sentences, against every uniform preset. The result table is
   printed, with the chosen Plan and float deployed here (the compiled torch engine, timed in a
   few interleaved rounds) next to their predicted latency; the report (``report.html``,
   ``report.json``, ``plan.json``) and the schemes table
   (``weight_schemes.json``) are written to ``out/demo``. About 5.5 minutes on 2 cores with
   an empty cache; the measurements are cached, so a second run takes seconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors import safe_open

from quantbalance.cli.main import quiet_third_party_logs
from quantbalance.cli.search_cmd import make_console, run_search, show_result
from quantbalance.evaluate import sqnr
from quantbalance.formats import PerChannel, PerGroup, PerTensor, Scheme, quantize_tensor
from quantbalance.io import atomic_write_text
from quantbalance.tasks.minilm import minilm_model_path

SCHEMES = [
    Scheme(8, granularity=PerTensor()),
    Scheme(8, granularity=PerChannel()),
    Scheme(4, granularity=PerChannel()),
    Scheme(4, symmetric=False, granularity=PerGroup(size=128)),
    Scheme(4, kind="nf4", granularity=PerGroup(size=64)),
    Scheme(3, symmetric=False, granularity=PerGroup(size=128)),
    Scheme(3, kind="codebook", granularity=PerChannel()),
    Scheme(8, kind="fp8_e4m3", granularity=PerChannel()),
    Scheme(2, symmetric=False, granularity=PerGroup(size=64)),
]
WEIGHT = "encoder.layer.0.intermediate.dense.weight"


def schemes_table(console: Console) -> list[dict[str, float | str]]:
    """Quantize one real MiniLM weight with every scheme in ``SCHEMES`` and print a table.

    Args:
        console: where to print.

    Returns:
        One row per scheme.
    """
    path = minilm_model_path() / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith(WEIGHT))  # noqa: SIM118 - safe_open API
        w = f.get_tensor(key).float()
    table = Table("scheme", "bits/weight", "bytes", "SQNR (dB)",
                  title=f"{key} {tuple(w.shape)} ({w.numel() * 4:,} bytes in float32)")  # fmt: skip
    rows = []
    for s in SCHEMES:
        qt = quantize_tensor(w, s)
        db = sqnr(w, qt.dequantize())
        rows.append({"scheme": s.label, "bpw": qt.bits_per_weight, "bytes": qt.nbytes, "sqnr": db})
        table.add_row(s.label, f"{qt.bits_per_weight:.3f}", f"{qt.nbytes:,}", f"{db:.2f}")
    console.print(table)
    return rows


OUT = Path("out/demo")
SEARCH = {"task": "minilm", "max_drop": "1%", "n_sensitivity": 32}


def command(out: Path = OUT) -> str:
    """The equivalent command line.

    Args:
        out: the output folder.

    Returns:
        ``quantbalance search ...``.

    Example:
        >>> command(Path("out/demo"))
        'quantbalance search --task minilm --max-drop 1% --n-sensitivity 32 --out out/demo'
    """
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in SEARCH.items())
    return f"quantbalance search {opts} --out {out}"


def main(out: Path = OUT) -> int:
    """Run the demo.

    Args:
        out: the output folder.

    Returns:
        The exit status: 0 when the chosen Plan meets the budget, else 1.
    """
    logging.basicConfig(level=logging.WARNING)
    quiet_third_party_logs()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    console = make_console()
    rows = schemes_table(console)
    atomic_write_text(out / "weight_schemes.json", json.dumps(rows, indent=1))
    console.print(f"\n[bold]{command(out)}[/]")
    res, path = run_search(out, **SEARCH, deployed=True, out_console=console)  # type: ignore[arg-type]
    show_result(res, path, out, console)
    return 0 if res.met_budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
