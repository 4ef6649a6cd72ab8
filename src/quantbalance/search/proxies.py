"""Single-layer quantization without re-quantizing the model, and the cheap sensitivity proxies.

One calibration pass over the float (BatchNorm-folded) model collects, per layer, the input's
second moment per feature, a small input sample, and the static activation ranges of every
candidate. A one-layer quantized module is then built with round to nearest and the shared
ranges, which is exactly what ``quantize`` with a one-layer Plan computes (the layers before
it are float). The proxies:

* ``sqnr_db``: SQNR of the layer's output, quantized vs float, on the sampled float inputs;
* ``fisher_db``: a diagonal Hessian/Fisher estimate of the output error: the squared weight
  perturbation weighted by the input's second moment per input feature (plus the input
  quantization noise weighted by the squared weights), as a signal-to-noise ratio in dB.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms import ALGORITHMS, QuantContext
from quantbalance.calibration import capture
from quantbalance.evaluate import sqnr
from quantbalance.nn import ActQuantizer, layout_of, plain_forward, quantized_type, weight_matrix
from quantbalance.plan import LayerSpec

MAX_DB = 300.0
_ROWS = 256


def _kind(mod: nn.Module) -> str | None:
    """``embedding``, ``linear`` (transformers' ``Conv1D`` too) or ``conv`` (1-D/2-D) for layers
    running their torch class's own forward; None for others (no Fisher estimate, SQNR only)."""
    if not plain_forward(mod):
        return None
    if isinstance(mod, nn.Embedding):
        return "embedding"
    if layout_of(mod) in ("rows", "transposed"):
        return "linear"
    return "conv" if isinstance(mod, nn.Conv1d | nn.Conv2d) else None


def _column_weights(mod: nn.Module, per_input: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-input-feature (or per-row, for embeddings) weight to the weight matrix."""
    w = weight_matrix(mod)
    kind = _kind(mod)
    if kind == "embedding":
        return per_input[:, None].expand_as(w)
    if kind == "linear":
        return per_input[None, :].expand_as(w)
    kk = w.shape[1] // (mod.in_channels // mod.groups)
    cg = mod.in_channels // mod.groups
    group = torch.arange(w.shape[0]) // (w.shape[0] // mod.groups)
    chan = group[:, None] * cg + torch.arange(w.shape[1])[None, :] // kk
    return per_input[chan]


class LayerStats:
    """Input statistics of one layer from the calibration pass."""

    def __init__(self) -> None:
        self.sq: torch.Tensor | None = None
        self.count = 0
        self.sample: torch.Tensor | None = None

    def update(self, mod: nn.Module, x: torch.Tensor) -> None:
        """Accumulate one input (second moments; a sample of the first batch)."""
        kind = _kind(mod)
        if kind is None:  # its own forward: keep a sample for the output SQNR only
            self.sample = x[:4].clone() if self.sample is None else self.sample
            return
        if kind == "embedding":
            sq = torch.bincount(x.reshape(-1), minlength=mod.num_embeddings).double()
            n = 1
        elif kind == "linear":
            x = x.reshape(-1, x.shape[-1])
            sq, n = x.double().pow(2).sum(0), x.shape[0]
        else:
            dims = [0, *range(2, x.dim())]
            sq, n = x.double().pow(2).sum(dims), x.numel() // x.shape[1]
        self.sq = sq if self.sq is None else self.sq + sq
        self.count += n
        if self.sample is None:
            if kind == "linear":
                step = max(1, x.shape[0] // _ROWS)
                self.sample = x[::step][:_ROWS].float().clone()
            else:
                self.sample = x[:4].clone()


def calibrate(
    base: nn.Module,
    options: dict[str, dict[str, LayerSpec | None]],
    batches: list[Any],
    progress: bool,
) -> tuple[dict[str, LayerStats], dict[str, ActQuantizer]]:
    """One pass over ``batches``: per-layer input statistics and frozen static act quantizers.

    Args:
        base: the folded float model.
        options: layer -> key -> spec.
        batches: calibration batches.
        progress: show a progress bar.

    Returns:
        ``(layer -> LayerStats, act key -> frozen ActQuantizer)``.
    """
    stats = {n: LayerStats() for n in options}
    quantizers: dict[str, ActQuantizer] = {}
    for n, opts in options.items():
        for s in opts.values():
            if s is not None and s.activation is not None and s.act_mode == "static":
                quantizers.setdefault(
                    _act_key(n, s), ActQuantizer(s.activation, "static", s.act_observer)
                )

    def hook(name: str, mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        if not inp or not isinstance(inp[0], torch.Tensor):
            return
        x = inp[0].detach()
        stats[name].update(mod, x)
        for key, q in quantizers.items():
            if key.startswith(name + "|"):
                q(x)

    mods = {n: base.get_submodule(n) for n in options}
    capture(base, mods, batches, hook, desc="sensitivity calibration", progress=progress)
    for key, q in quantizers.items():
        q.freeze(key.split("|")[0])
    return stats, quantizers


def _act_key(name: str, spec: LayerSpec) -> str:
    assert spec.activation is not None
    return f"{name}|{spec.activation.model_dump_json()}|{spec.act_mode}|{spec.act_observer}"


def build_qmodule(
    base: nn.Module, name: str, spec: LayerSpec, quantizers: dict[str, ActQuantizer]
) -> nn.Module:
    """The quantized module of one layer (round to nearest, shared activation ranges).

    Args:
        base: the folded float model.
        name: the layer.
        spec: its spec.
        quantizers: frozen static quantizers from :func:`calibrate`.

    Returns:
        The QuantModule (not inserted in ``base``).
    """
    mod = base.get_submodule(name)
    ctx = QuantContext(base, {name: spec}, None, progress=False)
    ALGORITHMS["rtn"](ctx)
    act = None
    if spec.activation is not None and not isinstance(mod, nn.Embedding):
        if spec.act_mode == "static":
            act = copy.deepcopy(quantizers[_act_key(name, spec)])
        else:
            act = ActQuantizer(spec.activation, "dynamic")
    qtype = quantized_type(mod)
    assert qtype is not None, name
    return qtype.from_float(mod, ctx.qweights[name], act)


@torch.no_grad()  # not inference_mode: the module caches its weight for later evaluations
def proxies(mod: nn.Module, qmod: nn.Module, st: LayerStats) -> dict[str, float | None]:
    """Output SQNR and the Fisher-style estimate (dB) of ``qmod`` against ``mod``.

    Args:
        mod: the float layer.
        qmod: its quantized module.
        st: the layer's input statistics.

    Returns:
        ``{"sqnr_db", "fisher_db"}`` (None when calibration never reached the layer).
    """
    if st.sample is None:
        return {"sqnr_db": None, "fisher_db": None}
    if st.sq is None:  # a layer with its own forward: no input-statistics estimate
        return {"sqnr_db": min(sqnr(mod(st.sample), qmod(st.sample)), MAX_DB), "fisher_db": None}
    w = weight_matrix(mod).double()
    dw = weight_matrix(qmod).double() - w
    m = st.sq / max(st.count, 1)
    if isinstance(mod, nn.Embedding) and float(m.sum()) == 0:
        m = torch.ones_like(m)
    cw = _column_weights(mod, m)
    signal = float((cw * w.pow(2)).sum())
    noise = float((cw * dw.pow(2)).sum())
    aq = getattr(qmod, "input_quantizer", None)
    x = st.sample
    if aq is not None:
        dx = (aq(x.float()) - x.float()).double().pow(2)
        e = dx.mean(0) if _kind(mod) == "linear" else dx.mean([0, *range(2, dx.dim())])
        noise += float((_column_weights(mod, e) * w.pow(2)).sum())
    fisher = MAX_DB if noise <= 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    out_db = sqnr(mod(x), qmod(x))
    return {"sqnr_db": min(out_db, MAX_DB), "fisher_db": min(fisher, MAX_DB)}
