"""Numerical guards: find quantized layers whose output is NaN/inf or drowned in noise.

Quantization can produce garbage without an error: an overflowing scale turns a layer's output
into inf, a degenerate range into NaN, a too-coarse grid into noise louder than the signal. The
guard runs the float and the quantized model on the same batches and flags, by name, every
quantized layer whose output

* holds NaN or inf where the float layer's output is finite, or
* has an SQNR (``10·log10(signal / noise)`` over the finite entries) below ``floor_db``
  (default 0 dB: the quantization noise is as loud as the signal).

``qb.compare``, ``qb.search`` (for the chosen Plan) and ``qb.quantize(check_numerics=...)`` use
:func:`layer_numerics`; anyone can call it.

Example:
    >>> import torch, quantbalance as qb
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    >>> q = qb.quantize(net, "int8-weight", progress=False)
    >>> bad = problems(layer_numerics(net, q, [torch.randn(4, 8)]))
    >>> bad
    {}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from quantbalance.calibration import capture
from quantbalance.errors import NumericsError
from quantbalance.evaluate.sqnr import first_tensor, sqnr
from quantbalance.nn import QuantModule
from quantbalance.transform import fold_batchnorm, split_attention

#: Default SQNR floor in dB: below it the quantization noise is louder than the signal.
SQNR_FLOOR_DB = 0.0


@dataclass
class LayerNumerics:
    """One quantized layer's output against the float layer's.

    Attributes:
        sqnr_db: SQNR over the entries finite in both (``inf`` when identical).
        nonfinite: entries NaN/inf in the quantized output but finite in the float one.
        total: entries compared.
        problem: what is wrong, in words (None when nothing is).
    """

    sqnr_db: float
    nonfinite: int
    total: int
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (infinite SQNR as None)."""
        d = asdict(self)
        d["sqnr_db"] = None if math.isinf(self.sqnr_db) else self.sqnr_db
        return d


def _outputs(
    model: nn.Module, names: Sequence[str], batches: Sequence[Any], what: str, progress: bool
) -> dict[str, torch.Tensor]:
    outs: dict[str, list[torch.Tensor]] = {}

    def grab(name: str, mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        t = first_tensor(out)
        if t is not None:
            outs.setdefault(name, []).append(t.detach().float().cpu().reshape(-1))

    mods = {n: model.get_submodule(n) for n in names}
    capture(model, mods, batches, grab, desc=what, progress=progress)
    return {n: torch.cat(v) for n, v in outs.items()}


def layer_numerics(
    float_model: nn.Module,
    qmodel: nn.Module,
    batches: Sequence[Any],
    floor_db: float = SQNR_FLOOR_DB,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, LayerNumerics]:
    """Run both models on ``batches`` and judge each quantized layer's output.

    Args:
        float_model: the float model (BatchNorm folded like ``qmodel`` when it was).
        qmodel: the quantized model.
        batches: input batches (Tensor, tuple or dict each).
        floor_db: SQNR below this is a problem.
        names: layers to judge (default every ``QuantModule`` of ``qmodel``).
        progress: show progress bars.

    Returns:
        layer name -> :class:`LayerNumerics`, in model order.
    """
    if names is None:
        names = [n for n, m in qmodel.named_modules() if isinstance(m, QuantModule)]
    info = getattr(qmodel, "qb_info", None)
    ref = float_model
    if info is not None and (info.folded or info.attention):  # the layers quantize saw
        ref = copy.deepcopy(float_model).eval()
        fold_batchnorm(ref)
        split_attention(ref)
    with torch.no_grad():
        f_out = _outputs(ref, names, batches, "float outputs", progress)
        q_out = _outputs(qmodel, names, batches, "quantized outputs", progress)
    result = {}
    for n in names:
        if n not in f_out or n not in q_out or f_out[n].shape != q_out[n].shape:
            continue
        f, q = f_out[n], q_out[n]
        bad = int((torch.isfinite(f) & ~torch.isfinite(q)).sum())
        db = sqnr(f, q)
        problem = None
        if bad:
            problem = f"output has {bad} NaN/inf values of {f.numel()} (float output: finite)"
        elif db < floor_db:
            problem = f"output SQNR {db:.1f} dB is below the {floor_db:g} dB floor"
        result[n] = LayerNumerics(db, bad, f.numel(), problem)
    return result


def problems(numerics: dict[str, LayerNumerics]) -> dict[str, str]:
    """The layers with a problem and what it is.

    Args:
        numerics: what :func:`layer_numerics` returned.

    Returns:
        layer name -> problem text.
    """
    return {n: r.problem for n, r in numerics.items() if r.problem}


def check_numerics(
    float_model: nn.Module,
    qmodel: nn.Module,
    batches: Sequence[Any],
    floor_db: float = SQNR_FLOOR_DB,
) -> dict[str, LayerNumerics]:
    """:func:`layer_numerics`, raising when any layer has a problem.

    Args:
        float_model: the float model.
        qmodel: the quantized model.
        batches: input batches.
        floor_db: SQNR floor in dB.

    Returns:
        The numerics (when every layer is fine).

    Raises:
        NumericsError: naming each layer with a problem.
    """
    got = layer_numerics(float_model, qmodel, batches, floor_db)
    bad = problems(got)
    if bad:
        lines = "\n".join(f"  {n}: {p}" for n, p in bad.items())
        raise NumericsError(
            f"{len(bad)} quantized layer(s) produce garbage:\n{lines}\nkeep them float (Plan "
            "layer -> None), give them more bits or a finer granularity, or check their weights"
        )
    return got
