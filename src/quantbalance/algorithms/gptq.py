"""GPTQ (Frantar et al., 2023): quantize a weight column by column, compensating each error.

For a layer ``y = W x`` with calibration inputs ``X`` the objective is ``‖X Wᵀ - X Ŵᵀ‖²``, whose
Hessian over one row of ``W`` is ``H = 2/n Σ x xᵀ``. With ``U`` the upper Cholesky factor of
``H⁻¹``, quantizing column ``j`` leaves the error ``e = (w_j - q_j) / U[j, j]``, and the optimal
update of the columns not yet quantized is ``W[:, j+1:] -= e · U[j, j+1:]``. Lazy batches apply
it inside a block of ``block_size`` columns, then to the rest with one matrix product.

* Damping: ``H + damp · mean(diag H) · I``; a Hessian that is still not positive definite gets
  ten times more, and one with NaN/Inf is replaced by the identity (plain rounding); both are
  reported (log warning and :class:`GPTQResult`), neither yields NaN weights.
* Dead columns (``H[j, j] = 0``: the input channel was always 0) are rounded to nearest and
  spread no error.
* ``act_order`` quantizes columns by decreasing ``H[j, j]``.
* Parameters (scale, zero point) are computed exactly as ``quantize_tensor`` computes them, so
  the result has the standard :class:`QuantizedTensor` layout: *static* ones come from the
  original weight (always with ``act_order``: the groups stay the original column groups);
  without ``act_order``, groups along the input axis get theirs when their first column is
  reached, from the already-updated weights (the paper's choice, usually better).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from quantbalance.algorithms.base import OptionsSlot, QuantContext, register_algorithm
from quantbalance.calibration import make_observer
from quantbalance.calibration.sequential import InputStatsCollector, run_sequential, supports_rows
from quantbalance.errors import ConfigError, UnsupportedError
from quantbalance.formats import (
    PerChannel,
    PerGroup,
    QuantizedTensor,
    Scheme,
    check_finite,
    packing,
    quantize_tensor,
)
from quantbalance.formats.granularity import expand_params
from quantbalance.formats.nonuniform import NF4_TABLE, nearest_code
from quantbalance.formats.uniform import SCALE_DTYPES, dequantize_affine, quantize_affine
from quantbalance.nn import weight_matrix

log = logging.getLogger(__name__)

SUPPORTED_KINDS = ("uniform", "nf4")
ROW_CHUNK = 4096  # rows solved at once when parameters are per row (bounds the temporaries)


@dataclass(frozen=True)
class GPTQOptions:
    """Options of the ``gptq`` step (see :func:`gptq_solve`); set them with :func:`gptq_options`."""

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    static_groups: bool | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or not self.damp >= 0:
            raise ConfigError(
                f"GPTQ needs block_size >= 1 and damp >= 0, got {self.block_size}, {self.damp}"
            )


_SLOT = OptionsSlot(GPTQOptions, "GPTQ", "gptq")

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


@dataclass(frozen=True)
class PreparedHessian:
    """A layer Hessian ready for GPTQ (reusable by layers that share their input, e.g. q/k/v).

    Attributes:
        U: upper Cholesky factor of the damped ``H⁻¹``, in quantization order (float32).
        perm: quantization order of the columns (act_order), or None for the natural order.
        damp: relative damping used (``inf``: the Hessian was unusable, ``U`` is the identity).
        dead: number of dead columns.
        fallback: the Hessian was unusable: GPTQ reduces to rounding to nearest.
    """

    U: torch.Tensor
    perm: torch.Tensor | None
    damp: float
    dead: int
    fallback: bool


def prepare_hessian(
    hessian: torch.Tensor, damp: float = 0.01, act_order: bool = False, name: str = "weight"
) -> PreparedHessian:
    """Clean, order, damp and factorise a Hessian (no NaN can come out of it).

    Args:
        hessian: ``(in, in)`` Hessian ``2/n Σ x xᵀ``.
        damp: damping as a fraction of the mean diagonal (raised ×10 until ``H`` factorises).
        act_order: order columns by decreasing diagonal.
        name: what to call the layer in warnings.

    Returns:
        The :class:`PreparedHessian`.
    """
    H = hessian.detach().to(torch.float64, copy=True)
    n = H.shape[0]
    if not torch.isfinite(H).all():
        log.warning("%s: Hessian has NaN/Inf entries; rounding to nearest instead", name)
        return PreparedHessian(torch.eye(n), None, float("inf"), 0, True)
    H = (H + H.T).div_(2)
    dead = torch.diag(H) <= 0  # the input channel was always 0: round it, spread nothing
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else None
    if perm is not None:
        H = H[perm][:, perm]
    mean_diag = float(torch.diag(H).mean())
    for rel in [damp] + [max(damp, 1e-4) * 10**k for k in range(1, 7)]:
        damped = H.clone()  # H + rel · mean · I, without an n × n identity (memory)
        damped.diagonal().add_(rel * mean_diag)
        L, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                if rel != damp:
                    log.warning("%s: Hessian not positive definite at damp=%g; used %g", name,
                                damp, rel)  # fmt: skip
                return PreparedHessian(U.float(), perm, rel, int(dead.sum()), False)
    log.warning("%s: Hessian could not be factorised at any damping; rounding to nearest", name)
    return PreparedHessian(torch.eye(n), None, float("inf"), int(dead.sum()), True)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scheme: Scheme,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool | None = None,
) -> QuantizedTensor:
    """Quantize ``weight`` with GPTQ; see :func:`gptq_solve` (this returns only the weight).

    Args:
        weight: ``(out, in)`` float weight.
        hessian: ``(in, in)`` Hessian ``2/n Σ x xᵀ`` of the layer's inputs.
        scheme: a ``uniform`` or ``nf4`` scheme of any granularity.
        block_size: columns per lazy batch.
        damp: damping as a fraction of the mean Hessian diagonal.
        act_order: quantize columns by decreasing Hessian diagonal.
        static_groups: parameters from the original weight (default: ``act_order``).

    Returns:
        The quantized weight, laid out exactly as ``quantize_tensor`` lays it out.

    Example:
        >>> w = torch.randn(8, 64)
        >>> qt = gptq_quantize(w, torch.eye(64), Scheme(4, granularity=PerGroup(size=32)))
        >>> tuple(qt.scale.shape)
        (8, 2)
    """
    return gptq_solve(weight, hessian, scheme, block_size, damp, act_order, static_groups).qweight


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
    """GPTQ with lazy batch updates (the algorithm of the module docstring).

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
    step = ROW_CHUNK if by_rows else W0.shape[0]
    parts = [
        _Params(W0[r : r + step], scheme, observer).solve(prep, block_size, grouped and not static)
        for r in range(0, W0.shape[0], step)
    ]
    qt = _build(parts, scheme, tuple(W0.shape), weight.dtype)
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
    if scheme.kind not in SUPPORTED_KINDS:
        raise UnsupportedError(
            f"{name}: GPTQ supports kinds {SUPPORTED_KINDS}, got {scheme.kind!r} (use rtn)"
        )


class _Params:
    """Parameters of a slice of rows, as ``quantize_tensor`` computes them, and its GPTQ loop."""

    def __init__(self, W: torch.Tensor, scheme: Scheme, observer: str) -> None:
        self.W, self.scheme, self.observer = W, scheme, observer
        ref = quantize_tensor(W, scheme, self._observer(scheme.granularity))
        assert ref.scale is not None
        shape, gran = tuple(W.shape), scheme.granularity
        self.scale = ref.scale.float().clone()
        self.zp = None if ref.zero_point is None else ref.zero_point.to(torch.int32).clone()
        self.St = expand_params(self.scale, shape, gran).T.contiguous()  # (in, out): per element
        self.Zt = None if self.zp is None else expand_params(self.zp, shape, gran).T.contiguous()

    def _observer(self, gran: Any) -> Any:
        return None if self.observer == "minmax" else make_observer(self.observer, gran)

    def solve(
        self, prep: PreparedHessian, block_size: int, dynamic: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
        """The GPTQ loop on Wᵀ (a column of W is a contiguous row; row k is column order[k]).

        Returns:
            ``(codes (out, in), scale grid, zero-point grid or None, loss)``.
        """
        U, perm = prep.U, prep.perm
        n_out, n_in = self.W.shape
        order = perm.tolist() if perm is not None else list(range(n_in))
        Wt = (self.W.T[perm] if perm is not None else self.W.T).contiguous()
        codes = torch.empty(n_in, n_out, dtype=torch.uint8)
        loss = torch.zeros((), dtype=torch.float64)
        for i1 in range(0, n_in, block_size):
            i2 = min(i1 + block_size, n_in)
            W1, U1 = Wt[i1:i2].clone(), U[i1:i2, i1:i2]
            Err1 = torch.empty(i2 - i1, n_out)
            for i in range(i2 - i1):
                j = order[i1 + i]
                size = self.scheme.granularity.size if dynamic else 0  # type: ignore[union-attr]
                if dynamic and j % size == 0:  # a group's parameters from its updated columns
                    head = W1[i : i + size]
                    self._refresh(j, torch.cat([head, Wt[i2 : i2 + size - head.shape[0]]]).T)
                codes[j], q = self._quantize(W1[i], j)
                Err1[i] = (W1[i] - q) / U1[i, i]
                W1[i + 1 :].addr_(U1[i, i + 1 :], Err1[i], alpha=-1)
            loss += Err1.double().square().sum() / 2
            Wt[i2:] -= U[i1:i2, i2:].T @ Err1
        return codes.T.contiguous(), self.scale, self.zp, float(loss)

    def _refresh(self, j: int, cols: torch.Tensor) -> None:
        size = self.scheme.granularity.size  # type: ignore[union-attr]
        one = self.scheme.model_copy(update={"granularity": PerGroup(size=size)})
        ref = quantize_tensor(cols, one, self._observer(one.granularity))
        assert ref.scale is not None
        k, end = j // size, j + cols.shape[1]
        self.scale[:, k] = ref.scale.float()[:, 0]
        self.St[j:end] = self.scale[:, k]
        if self.zp is not None and self.Zt is not None and ref.zero_point is not None:
            self.zp[:, k] = ref.zero_point.to(torch.int32)[:, 0]
            self.Zt[j:end] = self.zp[:, k]

    def _quantize(self, w: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.St[j]
        if self.scheme.kind == "nf4":
            u = nearest_code((w / s).unsqueeze(1), NF4_TABLE)[:, 0]
            return u.to(torch.uint8), NF4_TABLE[u] * s
        z = None if self.Zt is None else self.Zt[j]
        q = quantize_affine(w, s, z, self.scheme)
        return (q - self.scheme.qmin).to(torch.uint8), dequantize_affine(q, s, z, self.scheme)


def _build(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]],
    scheme: Scheme,
    shape: tuple[int, ...],
    dtype: torch.dtype,
) -> QuantizedTensor:
    """The QuantizedTensor of the solved row slices, in the standard layout."""
    codes, scale, zp = (
        (parts[0][0], parts[0][1], parts[0][2])  # one slice (a per-tensor scale is 0-d)
        if len(parts) == 1
        else [None if p[0] is None else torch.cat(p) for p in list(zip(*parts, strict=True))[:3]]
    )
    qt = QuantizedTensor(
        packed=packing.pack(codes, scheme.bits),
        scale=scale.to(SCALE_DTYPES[scheme.scale_dtype]),
        zero_point=None if zp is None else zp.to(torch.int8 if scheme.signed else torch.uint8),
        codebook=None,
        scheme=scheme,
        shape=shape,
        dtype=dtype,
    )
    qt.validate()
    return qt


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
        if supports_rows(m) and ctx.specs[n].weight.kind in SUPPORTED_KINDS  # type: ignore[union-attr]
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

    def finish(names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        prepared: list[tuple[torch.Tensor, Any, PreparedHessian]] = []  # sharing an input
        for n in names:
            scheme, opts = ctx.specs[n].weight, _SLOT.for_spec(ctx.specs[n])
            assert scheme is not None
            hessian = stats.pop(n).hessian()
            key = (opts.damp, opts.act_order)
            prep = next((p for h, k, p in prepared if k == key and torch.equal(h, hessian)), None)
            if prep is None:
                prep = prepare_hessian(hessian, opts.damp, opts.act_order, n)
                prepared.append((hessian, key, prep))
            w = weight_matrix(ctx.model.get_submodule(n))
            res = gptq_solve(w, prep, scheme, opts.block_size, static_groups=opts.static_groups,
                             observer=ctx.specs[n].weight_observer, name=n)  # fmt: skip
            ctx.qweights[n] = res.qweight
            report[n] = {"loss": round(res.loss, 6), "dead": res.dead, "fallback": res.fallback,
                         "damp": res.damp if res.damp != float("inf") else None}  # fmt: skip
            out[n] = res.qweight.dequantize()
        return out

    def done(names: list[str]) -> None:
        for n in names:
            ctx.release(n)

    # The module map is handed over (no reference kept here): released float layers are freed.
    run_sequential(ctx.model, batches, {n: ctx.model.get_submodule(n) for n in owned}, stats,
                   finish, desc="gptq", progress=ctx.progress, done=done)  # fmt: skip
    log.info("gptq: %d layers in %.1f s", len(owned), time.perf_counter() - t0)
