"""GPTQ (Frantar et al., 2023): quantize a weight column by column, compensating each error.

This module holds the entry points and the pipeline step; the math (the algorithm, damping and
fallbacks, act-order, static and dynamic groups) is in :mod:`quantbalance.algorithms.gptq_core`.

* :func:`gptq_solve` / :func:`gptq_quantize`: validate, solve a weight's rows in slices of
  :data:`ROW_CHUNK` when parameters are per row, and assemble the standard
  :class:`QuantizedTensor` (with :class:`GPTQResult`: the loss, damping, dead columns, fallback).
* :func:`gptq_options` (:class:`GPTQOptions`): the ``gptq`` step's options slot.
* :func:`gptq`: the registered ``gptq`` step, run block by block through
  :func:`~quantbalance.calibration.sequential.run_sequential`.

:class:`PreparedHessian` and :func:`prepare_hessian` are re-exported from ``gptq_core``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from quantbalance.algorithms.base import OptionsSlot, QuantContext, register_algorithm
from quantbalance.algorithms.gptq_core import (
    PreparedHessian,
    RowSolver,
    build_qtensor,
    prepare_hessian,
)
from quantbalance.calibration.memory import release_free_memory
from quantbalance.calibration.sequential import InputStatsCollector, run_sequential, supports_rows
from quantbalance.errors import ConfigError, UnsupportedError
from quantbalance.formats import PerChannel, PerGroup, QuantizedTensor, Scheme, check_finite
from quantbalance.formats.kinds import KINDS
from quantbalance.nn import weight_matrix
from quantbalance.options import GPTQOptions

log = logging.getLogger(__name__)

SUPPORTED_KINDS = tuple(name for name, fmt in KINDS.items() if fmt.gptq)
ROW_CHUNK = 4096  # rows solved at once when parameters are per row (bounds the temporaries)


_SLOT = OptionsSlot(GPTQOptions, "GPTQ", "gptq")


class _Dequantized(Mapping[str, torch.Tensor]):
    """The solved layers' weights for the block's second run, dequantized when swapped in.

    Dequantizing each layer as soon as it is solved held every earlier layer's float weights
    through the later layers' Hessian factorisations (a block of float32 weights at the peak).
    """

    def __init__(self, qweights: dict[str, QuantizedTensor]) -> None:
        self._q = qweights

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._q[name].dequantize()

    def __iter__(self) -> Iterator[str]:
        return iter(self._q)

    def __len__(self) -> int:
        return len(self._q)

#: The options in force (defaults outside any ``gptq_options`` block).
current_gptq_options = _SLOT.current
#: ``with gptq_options(field=value):`` sets options for the ``gptq`` step (context-local).
gptq_options = _SLOT.override


@dataclass(frozen=True)
class GPTQResult:
    """A GPTQ-quantized weight and what happened on the way.

    Attributes:
        qweight: the quantized weight (standard layout).
        loss: ``Σ (w - q)² / U[j, j]² / 2``, GPTQ's estimate of the added output error.
        damp: relative damping finally used.
        dead: number of dead input columns.
        fallback: the Hessian was unusable and the weight was rounded to nearest.
    """

    qweight: QuantizedTensor
    loss: float
    damp: float
    dead: int
    fallback: bool


def gptq_quantize(
    weight: torch.Tensor, hessian: torch.Tensor, scheme: Scheme, **options: Any
) -> QuantizedTensor:
    """Quantize ``weight`` with GPTQ; see :func:`gptq_solve` (this returns only the weight).

    Args:
        weight: ``(out, in)`` float weight.
        hessian: ``(in, in)`` Hessian ``2/n Σ x xᵀ`` of the layer's inputs.
        scheme: a ``uniform`` or ``nf4`` scheme of any granularity.
        **options: keyword options of :func:`gptq_solve` (``block_size``, ``damp``,
            ``act_order``, ``static_groups``, ``observer``, ``name``), with its defaults.

    Returns:
        The quantized weight, laid out exactly as ``quantize_tensor`` lays it out.

    Example:
        >>> w = torch.randn(8, 64)
        >>> qt = gptq_quantize(w, torch.eye(64), Scheme(4, granularity=PerGroup(size=32)))
        >>> tuple(qt.scale.shape)
        (8, 2)
    """
    return gptq_solve(weight, hessian, scheme, **options).qweight


def gptq_solve(
    weight: torch.Tensor,
    hessian: torch.Tensor | PreparedHessian,
    scheme: Scheme,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool | None = None,
    observer: str = "minmax",
    name: str = "weight",
) -> GPTQResult:
    """GPTQ with lazy batch updates (the algorithm of :mod:`~quantbalance.algorithms.gptq_core`).

    Args:
        weight: ``(out, in)`` float weight.
        hessian: ``(in, in)`` Hessian of the layer's inputs, or a :class:`PreparedHessian`
            (then ``damp`` and ``act_order`` are the ones it was prepared with).
        scheme: a ``uniform`` or ``nf4`` scheme of any granularity.
        block_size: columns per lazy batch.
        damp: damping as a fraction of the mean Hessian diagonal.
        act_order: quantize columns by decreasing Hessian diagonal.
        static_groups: parameters from the original weight (default: ``act_order``). ``False``
            with ``act_order`` and groups along the input axis is rejected: the groups could
            not be stored in the standard layout.
        observer: how parameters are chosen from a block's values (``minmax`` or ``mse``, as
            for round to nearest).
        name: what to call the weight in messages.

    Returns:
        The :class:`GPTQResult`.
    """
    GPTQOptions(block_size, damp, act_order, static_groups)
    _check(weight, hessian, scheme, name)
    prep = hessian if isinstance(hessian, PreparedHessian) else prepare_hessian(
        hessian, damp, act_order, name)  # fmt: skip
    gran = scheme.granularity
    grouped = isinstance(gran, PerGroup) and gran.axis % 2 == 1
    static = prep.perm is not None if static_groups is None else static_groups
    if prep.perm is not None and grouped and not static:
        raise ConfigError("act_order with static_groups=False would reorder groups; use True")
    W0 = weight.detach().float()
    # Rows are independent given H: with per-row parameters, solve them in slices (memory).
    by_rows = grouped or (isinstance(gran, PerChannel) and gran.axis % 2 == 0)
    step, dynamic = (ROW_CHUNK if by_rows else W0.shape[0]), grouped and not static
    parts = [
        RowSolver(W0[r : r + step], scheme, observer).solve(prep, block_size, dynamic)
        for r in range(0, W0.shape[0], step)
    ]
    qt = build_qtensor(parts, scheme, tuple(W0.shape), weight.dtype)
    return GPTQResult(qt, sum(p[3] for p in parts), prep.damp, prep.dead, prep.fallback)


def _check(
    weight: torch.Tensor, hessian: torch.Tensor | PreparedHessian, scheme: Scheme, name: str
) -> None:
    if weight.dim() != 2 or not weight.is_floating_point():
        raise UnsupportedError(f"{name}: GPTQ needs a 2-D float weight, got {tuple(weight.shape)}")
    check_finite(weight, name)
    shape = tuple((hessian.U if isinstance(hessian, PreparedHessian) else hessian).shape)
    if shape != (weight.shape[1],) * 2:
        raise ConfigError(
            f"{name}: Hessian shape {shape} does not match the weight's "
            f"{weight.shape[1]} input columns"
        )
    if not scheme.format_kind.gptq:
        raise UnsupportedError(
            f"{name}: GPTQ supports kinds {SUPPORTED_KINDS}, got {scheme.kind!r} (use rtn)"
        )


@register_algorithm("gptq", needs_data=True)
def gptq(ctx: QuantContext) -> None:
    """Quantize the layers whose spec names ``gptq``, block by block.

    Options come from :func:`gptq_options` (defaults: :class:`GPTQOptions`), then from each
    layer's ``LayerSpec.algorithm_args["gptq"]`` (per layer).

    Layers without a row view of their input (embeddings, grouped convolutions) or with a
    scheme kind GPTQ does not support are left to round to nearest (logged).

    Args:
        ctx: the quantization context (fills ``ctx.qweights`` and ``ctx.log["gptq"]``).
    """
    batches = ctx.require_data("gptq")
    layers = ctx.layers_for("gptq")
    owned = [
        n
        for n, m in layers.items()
        if supports_rows(m) and ctx.specs[n].weight.format_kind.gptq  # type: ignore[union-attr]
    ]
    if len(owned) < len(layers):
        rest = sorted(set(layers) - set(owned))
        log.info("gptq: %d layer(s) left to round to nearest: %s", len(rest), ", ".join(rest))
    del layers  # hold names only: float modules are freed as their layers are released
    if not owned:
        return
    stats = InputStatsCollector()
    report: dict[str, dict[str, Any]] = ctx.log.setdefault("gptq", {})  # JSON-able
    t0 = time.perf_counter()

    def finish(names: list[str]) -> Mapping[str, torch.Tensor]:
        out: dict[str, QuantizedTensor] = {}
        # the previous layer's Hessian and its factorisation: layers sharing an input come one
        # after another (q/k/v, gate/up); only one Hessian is kept (memory)
        last: tuple[torch.Tensor, Any, PreparedHessian] | None = None
        for n in names:
            scheme, opts = ctx.specs[n].weight, _SLOT.for_spec(ctx.specs[n])
            assert scheme is not None
            hessian = stats.pop(n).take_hessian()
            key = (opts.damp, opts.act_order)
            if last is not None and last[1] == key and torch.equal(last[0], hessian):
                prep = last[2]
            else:
                last = None  # freed before the next factorisation
                release_free_memory()  # its n × n float64 work needs the freed heap pages
                prep = prepare_hessian(hessian, opts.damp, opts.act_order, n)
                last = (hessian, key, prep)
            del hessian
            w = weight_matrix(ctx.model.get_submodule(n))
            res = gptq_solve(w, prep, scheme, opts.block_size, static_groups=opts.static_groups,
                             observer=ctx.specs[n].weight_observer, name=n)  # fmt: skip
            ctx.qweights[n] = res.qweight
            report[n] = {"loss": round(res.loss, 6), "dead": res.dead, "fallback": res.fallback,
                         "damp": res.damp if res.damp != float("inf") else None}  # fmt: skip
            out[n] = res.qweight
        return _Dequantized(out)

    def done(names: list[str]) -> None:
        for n in names:
            ctx.release(n)

    # The module map is handed over (no reference kept here): released float layers are freed.
    run_sequential(ctx.model, batches, {n: ctx.model.get_submodule(n) for n in owned}, stats,
                   finish, desc="gptq", progress=ctx.progress, done=done,
                   hooks=ctx.blocks)  # fmt: skip
    log.info("gptq: %d layers in %.1f s", len(owned), time.perf_counter() - t0)
