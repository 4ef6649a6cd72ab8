"""``make demo``: quantize the bundled default task (MiniLM) and print what it costs.

1. One real weight matrix (MiniLM's first FFN layer, read from the model's safetensors file)
   under several schemes: bits per weight, bytes, SQNR.
2. The whole MiniLM sentence encoder under two presets, compared with float on the fidelity
   set: cosine, top-10 neighbour overlap, size; written to ``out/demo/result.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors import safe_open

from quantbalance.cli.run import quantize_and_compare
from quantbalance.evaluate import sqnr
from quantbalance.formats import PerChannel, PerGroup, PerTensor, Scheme, quantize_tensor
from quantbalance.io import atomic_write_text

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
    from quantbalance.tasks.minilm import minilm_model_path

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


def main() -> None:
    """Run the demo."""
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    console = Console()
    out = Path("out/demo")
    rows = schemes_table(console)
    result = quantize_and_compare(["int8-weight", "w8a8"], "minilm", None, None, None, console)
    result["weight_schemes"] = rows
    path = atomic_write_text(out / "result.json", json.dumps(result, indent=1, default=str))
    console.print(f"report written to [bold]{path}[/]")


if __name__ == "__main__":
    main()
