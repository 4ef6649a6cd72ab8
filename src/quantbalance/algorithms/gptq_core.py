"""GPTQ's numerical core (Frantar et al., 2023): prepare a Hessian, solve a weight's rows.

Pure math on tensors, returning data; the entry points (options, validation, row slicing,
:func:`~quantbalance.algorithms.gptq.gptq_solve`) and the ``gptq`` pipeline step live in
:mod:`quantbalance.algorithms.gptq`.

For a layer ``y = W x`` with calibration inputs ``X`` the objective is ``‖X Wᵀ - X Ŵᵀ‖²``, whose
Hessian over one row of ``W`` is ``H = 2/n Σ x xᵀ``. With ``U`` the upper Cholesky factor of
``H⁻¹``, quantizing column ``j`` leaves the error ``e = (w_j - q_j) / U[j, j]``, and the optimal
update of the columns not yet quantized is ``W[:, j+1:] -= e · U[j, j+1:]``. Lazy batches apply
it inside a block of ``block_size`` columns, then to the rest with one matrix product.

* Damping: ``H + damp · mean(diag H) · I``; a Hessian that is still not positive definite gets
  ten times more, and one with NaN/Inf is replaced by the identity (plain rounding); both are
  reported (log warning and ``GPTQResult``), neither yields NaN weights.
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
from dataclasses import dataclass
from typing import Any

import torch

from quantbalance.calibration import make_observer
from quantbalance.formats import PerGroup, QuantizedTensor, Scheme, quantize_tensor
from quantbalance.formats.granularity import expand_params
from quantbalance.formats.uniform import SCALE_DTYPES

log = logging.getLogger("quantbalance.algorithms.gptq")  # the name GPTQ's warnings always had

#: One solved row slice: ``(codes (out, in), scale grid, zero-point grid or None, loss)``.
SolvedRows = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]


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
    n = hessian.shape[0]
    if not torch.isfinite(hessian).all():
        log.warning("%s: Hessian has NaN/Inf entries; rounding to nearest instead", name)
        return PreparedHessian(torch.eye(n, device=hessian.device), None, float("inf"), 0, True)
    H, perm, dead = _cleaned(hessian, act_order)
    mean_diag = float(torch.diag(H).mean())
    n_dead = int(dead.sum())
    for rel in [damp] + [max(damp, 1e-4) * 10**k for k in range(1, 7)]:
        if H is None:  # the previous attempt factorised it in place: rebuild (same values)
            H = _cleaned(hessian, act_order)[0]
        H.diagonal().add_(rel * mean_diag)  # H + rel · mean · I, without an n × n identity
        L, info = torch.linalg.cholesky_ex(H)
        H = None  # at most two n × n float64 at any time (large layers: hundreds of MB each)
        if int(info) != 0:
            continue
        inverse = torch.cholesky_inverse(L)
        del L
        U, info = torch.linalg.cholesky_ex(inverse, upper=True)
        del inverse
        if int(info) == 0 and torch.isfinite(U).all():
            if rel != damp:
                log.warning("%s: Hessian not positive definite at damp=%g; used %g", name,
                            damp, rel)  # fmt: skip
            return PreparedHessian(U.float(), perm, rel, n_dead, False)
    log.warning("%s: Hessian could not be factorised at any damping; rounding to nearest", name)
    return PreparedHessian(torch.eye(n, device=hessian.device), None, float("inf"), n_dead, True)


_TILE = 512  # symmetrisation tile: the only temporary beside the float64 copy


def _cleaned(
    hessian: torch.Tensor, act_order: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(H + Hᵀ) / 2`` in float64, dead columns cleared, act-order applied: ``(H, perm, dead)``.

    The same values as ``H = (H + H.T) / 2; H[dead] = ...; H = H[perm][:, perm]``, built in one
    float64 copy (tiles symmetrised in place) plus one for the permuted copy (filled a slice of
    rows at a time).
    """
    H = hessian.detach().to(torch.float64, copy=True)
    n = H.shape[0]
    for i0 in range(0, n, _TILE):
        for j0 in range(i0, n, _TILE):
            a, b = H[i0 : i0 + _TILE, j0 : j0 + _TILE], H[j0 : j0 + _TILE, i0 : i0 + _TILE]
            s = (a + b.T).div_(2)  # a + b = b + a exactly: both triangles get the same value
            a.copy_(s)
            b.copy_(s.T)
    dead = torch.diag(H) <= 0  # the input channel was always 0: round it, spread nothing
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else None
    if perm is not None:  # H[perm][:, perm], gathered a slice of rows at a time
        out = torch.empty_like(H)
        for i in range(0, n, _TILE):
            out[i : i + _TILE] = H[perm[i : i + _TILE]][:, perm]
        H = out
    return H, perm, dead


class RowSolver:
    """Parameters of a slice of rows, as ``quantize_tensor`` computes them, and its GPTQ loop.

    Args:
        W: ``(rows, in)`` float32 slice of the weight (rows are independent given ``H``).
        scheme: a ``uniform`` or ``nf4`` scheme.
        observer: how parameters are chosen (``minmax`` or an observer name, e.g. ``mse``).
    """

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

    def solve(self, prep: PreparedHessian, block_size: int, dynamic: bool) -> SolvedRows:
        """The GPTQ loop on Wᵀ (a column of W is a contiguous row; row k is column order[k]).

        Args:
            prep: the prepared Hessian (its ``perm`` is the quantization order).
            block_size: columns per lazy batch.
            dynamic: groups along the input axis get their parameters when their first
                column is reached, from the updated weights (else: the static ones).

        Returns:
            ``(codes (out, in), scale grid, zero-point grid or None, loss)``.
        """
        U, perm = prep.U, prep.perm
        n_out, n_in = self.W.shape
        order = perm.tolist() if perm is not None else list(range(n_in))
        Wt = (self.W.T[perm] if perm is not None else self.W.T).contiguous()
        dev = self.W.device
        codes = torch.empty(n_in, n_out, dtype=torch.uint8, device=dev)
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        for i1 in range(0, n_in, block_size):
            i2 = min(i1 + block_size, n_in)
            W1, U1 = Wt[i1:i2].clone(), U[i1:i2, i1:i2]
            Err1 = torch.empty(i2 - i1, n_out, device=dev)
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
        z = None if self.Zt is None else self.Zt[j]
        return self.scheme.format_kind.round_trip(w, self.St[j], z, self.scheme)


def build_qtensor(
    parts: list[SolvedRows],
    scheme: Scheme,
    shape: tuple[int, ...],
    dtype: torch.dtype,
) -> QuantizedTensor:
    """The QuantizedTensor of the solved row slices, in the standard layout.

    Args:
        parts: the :meth:`RowSolver.solve` results of consecutive row slices.
        scheme: the scheme they were solved for.
        shape: the weight's shape.
        dtype: the weight's dtype.

    Returns:
        The validated :class:`QuantizedTensor`.
    """
    codes, scale, zp = (
        (parts[0][0], parts[0][1], parts[0][2])  # one slice (a per-tensor scale is 0-d)
        if len(parts) == 1
        else [None if p[0] is None else torch.cat(p) for p in list(zip(*parts, strict=True))[:3]]
    )
    scale = scale.to(SCALE_DTYPES[scheme.scale_dtype])
    zp = None if zp is None else zp.to(torch.int8 if scheme.signed else torch.uint8)
    qt = QuantizedTensor.from_codes(codes, scale, zp, None, scheme, shape, dtype)
    qt.validate()
    return qt
