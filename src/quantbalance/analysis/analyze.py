"""qb.analyze: per-layer weight/activation statistics and the SQNR each scheme would give."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantbalance.analysis.stats import tensor_stats
from quantbalance.args import checked
from quantbalance.calibration import capture, check_calib_data
from quantbalance.evaluate.sqnr import sqnr
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, Scheme, fake_quantize
from quantbalance.formats import quantize_tensor as qt_fn
from quantbalance.nn import weight_matrix
from quantbalance.transform import quantizable_layers

DEFAULT_WEIGHT_SCHEMES = (
    Scheme(8, granularity=PerChannel()),
    Scheme(4, granularity=PerChannel()),
    Scheme(4, symmetric=False, granularity=PerGroup(size=128)),
    Scheme(4, kind="nf4", granularity=PerGroup(size=64)),
    Scheme(3, symmetric=False, granularity=PerGroup(size=128)),
)
DEFAULT_ACT_SCHEMES = (
    Scheme(8, symmetric=False, granularity=PerTensor()),
    Scheme(8, symmetric=False, granularity=PerToken()),
)
_SAMPLE = 1 << 20


@dataclass
class Analysis:
    """Per-layer statistics.

    Attributes:
        rows: one dict per layer: ``layer``, ``type``, ``params``, ``weight`` (stats),
            ``activation`` (stats of the layer's input, if data was given),
            ``weight_sqnr`` / ``activation_sqnr`` (scheme label -> dB).
        samples: layer -> a sample of input activation values (for histograms).
    """

    rows: list[dict[str, Any]]
    samples: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready rows (samples omitted)."""
        return {"layers": self.rows}

    def most_sensitive(self, k: int = 5, scheme: str | None = None) -> list[str]:
        """Layers with the lowest weight SQNR for ``scheme`` (default: the lowest-bit one).

        Args:
            k: how many.
            scheme: a scheme label present in ``weight_sqnr``.

        Returns:
            Layer names, worst first.
        """
        if not self.rows:
            return []
        label = scheme or list(self.rows[0]["weight_sqnr"])[-1]
        ranked = sorted(self.rows, key=lambda r: r["weight_sqnr"].get(label, 0.0))
        return [r["layer"] for r in ranked[:k]]


@checked
def analyze(
    model: nn.Module,
    calib_data: Iterable[Any] | None = None,
    weight_schemes: Sequence[Scheme] = DEFAULT_WEIGHT_SCHEMES,
    act_schemes: Sequence[Scheme] = DEFAULT_ACT_SCHEMES,
    progress: bool = True,
) -> Analysis:
    """Statistics of every quantizable layer and the SQNR candidate schemes would give.

    Args:
        model: the float model (not modified).
        calib_data: optional batches; with them, each layer's input activations are analysed.
        weight_schemes: schemes whose weight SQNR is reported.
        act_schemes: uniform schemes whose activation SQNR is reported (dynamic ranges).
        progress: show a progress bar.

    Returns:
        An :class:`Analysis`.
    """
    layers = quantizable_layers(model)
    samples: dict[str, list[torch.Tensor]] = {}
    if calib_data is not None:
        batches = check_calib_data(calib_data)
        gen = torch.Generator().manual_seed(0)

        def grab(name: str, mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
            if isinstance(mod, nn.Embedding) or not inp or not isinstance(inp[0], torch.Tensor):
                return
            x = inp[0].detach().float()
            flat = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)
            if flat.shape[0] > 256:
                idx = torch.randperm(flat.shape[0], generator=gen)[:256]
                flat = flat[idx]
            samples.setdefault(name, []).append(flat)

        mods = {n: model.get_submodule(n) for n in layers}
        capture(model, mods, batches, grab, desc="analyzing activations", progress=progress)
    rows = []
    merged: dict[str, torch.Tensor] = {}
    for name, type_name in layers.items():
        mod = model.get_submodule(name)
        w = weight_matrix(mod).float()
        row: dict[str, Any] = {
            "layer": name,
            "type": type_name,
            "params": int(mod.weight.numel()),
            "weight": tensor_stats(w),
            "weight_sqnr": {s.label: sqnr(w, qt_fn(w, s).dequantize()) for s in weight_schemes},
        }
        if name in samples:
            x = _cat_rows(samples[name])
            merged[name] = x.reshape(-1)[:_SAMPLE]
            row["activation"] = tensor_stats(x)
            fin = torch.where(torch.isfinite(x), x, 0.0)
            row["activation_sqnr"] = {
                s.label: sqnr(fin, fake_quantize(fin, s)) for s in act_schemes
            }
        rows.append(row)
    return Analysis(rows, merged)


def _cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    width = parts[0].shape[-1]
    same = [p for p in parts if p.shape[-1] == width]
    return torch.cat(same, dim=0)
