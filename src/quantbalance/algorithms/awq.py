"""AWQ (Lin et al., 2024): activation-aware scaling and clipping before weight quantization.

Input channels that carry large activations matter most; scaling their weight columns up by
``s`` (and their activations down by ``s``) makes their rounding error relatively smaller.

* :func:`awq_search`: for a :class:`~quantbalance.algorithms.mapping.ScaleGroup`,
  ``s = E|x|^α`` (normalised so that ``√(max·min) = 1``) with ``α`` on a grid over ``[0, 1]``,
  minimising the group's output error ``Σ_l ‖X W_lᵀ - (X/s) Q(W_l·s)ᵀ‖²`` under each layer's
  target scheme. The error is computed exactly from the second moment ``E[x xᵀ]``
  (``tr(Δ E[x xᵀ] Δᵀ)``), so the search needs no forward passes. ``α = 0`` is round to nearest,
  so the chosen scales never raise this error above round to nearest's. Unlike llm-awq, the
  error is measured at the linears' outputs, not after the attention block that follows them.
* :func:`awq_clip`: per weight block (row or group), shrink the quantization range by
  ``r ∈ [1 - max_shrink, 1]`` to minimise that block's partial output error.
* Applying: :func:`~quantbalance.algorithms.mapping.fold_scales` (``1/s`` into the previous
  norm or Linear, ``s`` into the linears: the identity in exact arithmetic) and
  :func:`clip_weight`. Weights stay float; ``rtn`` or ``gptq`` quantizes them next
  (``"awq"`` or ``"awq+gptq"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from quantbalance.algorithms.base import OptionsSlot, QuantContext, register_algorithm
from quantbalance.algorithms.mapping import FAMILIES, ScaleGroup, find_scale_groups, fold_scales
from quantbalance.calibration.sequential import BlockHooks, InputStatsCollector, run_sequential
from quantbalance.errors import UnsupportedError
from quantbalance.formats import (
    PerChannel,
    PerGroup,
    Scheme,
    fake_quantize,
    grid_shape,
    to_blocks,
)
from quantbalance.formats.granularity import expand_params
from quantbalance.nn import plain_forward
from quantbalance.options import AWQOptions

log = logging.getLogger(__name__)


_SLOT = OptionsSlot(AWQOptions, "AWQ", "awq")

#: The options in force (defaults outside any ``awq_options`` block).
current_awq_options = _SLOT.current
#: ``with awq_options(field=value):`` sets options for the ``awq`` step (context-local).
awq_options = _SLOT.override


class ScaleSearch(NamedTuple):
    """Result of :func:`awq_search`: the scales, the chosen ``α`` and the output errors."""

    scales: torch.Tensor
    alpha: float
    error: float
    error_identity: float


def output_error(delta: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """``tr(Δ M Δᵀ)`` per row: the output error ``‖X Δᵀ‖²/n`` of each output channel.

    Args:
        delta: ``(out, in)`` weight error.
        moment: ``(in, in)`` second moment ``E[x xᵀ]`` of the inputs.

    Returns:
        ``(out,)`` errors.
    """
    return ((delta @ moment) * delta).sum(1)


def awq_search(
    weights: Sequence[torch.Tensor],
    schemes: Sequence[Scheme | None],
    moment: torch.Tensor,
    act_mean: torch.Tensor,
    n_grid: int = 20,
) -> ScaleSearch:
    """Search the per-input-channel scales of a group of linears sharing one input.

    Args:
        weights: ``(out_l, in)`` weights of the group's linears.
        schemes: each linear's weight scheme (None: stays float, adds no error).
        moment: ``(in, in)`` second moment ``E[x xᵀ]`` of the shared input.
        act_mean: ``(in,)`` mean absolute activation per channel.
        n_grid: ``α`` takes the values ``i / n_grid``, ``i = 0..n_grid``.

    Returns:
        The best :class:`ScaleSearch` (``scales`` multiply the weights' input columns).
    """
    mean = act_mean.float().clamp(min=float(act_mean.float().mean()) * 1e-3 + 1e-8)
    best: ScaleSearch | None = None
    base = 0.0
    for i in range(n_grid + 1):
        alpha = i / n_grid
        s = mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for w, scheme in zip(weights, schemes, strict=True):
            if scheme is None:
                continue
            w = w.detach().float()
            with torch.no_grad():
                deq = fake_quantize(w * s, scheme) / s
            err += float(output_error(w - deq, moment).sum())
        if i == 0:
            base = err
        if best is None or err < best.error:
            best = ScaleSearch(s, alpha, err, base)
    assert best is not None
    return best._replace(error_identity=base)


def _ranges(weight: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block ``(lo, hi)`` quantization ranges, as the grid of the scheme's granularity."""
    blocks, _ = to_blocks(weight, scheme.granularity)
    lo, hi = blocks.amin(1), blocks.amax(1)
    if scheme.symmetric:
        a = torch.maximum(lo.abs(), hi.abs())
        return -a, a
    return lo.clamp(max=0), hi.clamp(min=0)


def clip_weight(weight: torch.Tensor, ratios: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Clamp each block of ``weight`` to its range shrunk by ``ratios``.

    Args:
        weight: ``(out, in)`` weight.
        ratios: one ratio per block, in the scheme's parameter-grid order.
        scheme: the weight scheme.

    Returns:
        The clamped weight; round to nearest (min/max ranges) then uses the shrunk ranges.
    """
    lo, hi = _ranges(weight.float(), scheme)
    shape = tuple(weight.shape)
    r = ratios.reshape(-1)
    lo_f = expand_params(lo * r, shape, scheme.granularity)
    hi_f = expand_params(hi * r, shape, scheme.granularity)
    return torch.minimum(torch.maximum(weight.float(), lo_f), hi_f).to(weight.dtype)


def awq_clip(
    weight: torch.Tensor,
    moment: torch.Tensor,
    scheme: Scheme,
    max_shrink: float = 0.5,
    n_grid: int = 20,
) -> torch.Tensor:
    """Per-block clipping ratios minimising each block's partial output error.

    Supported granularities: ``PerChannel(axis=0)`` (a block is a row; error over the full
    moment) and ``PerGroup`` along the input axis (error over the group's diagonal block of the
    moment). Other granularities get ratio 1 (no clipping).

    Args:
        weight: ``(out, in)`` weight (already scaled, if AWQ scaling was applied).
        moment: ``(in, in)`` second moment of the inputs that weight sees.
        scheme: the weight scheme.
        max_shrink: smallest ratio tried is ``1 - max_shrink``.
        n_grid: ratios tried: ``1 - i / n_grid`` for ``i = 0 .. max_shrink · n_grid``.

    Returns:
        Ratios in ``(0, 1]``, one per block, shaped like the scheme's parameter grid.
    """
    w = weight.detach().float()
    gran = scheme.granularity
    lo, _ = _ranges(w, scheme)
    by_row = isinstance(gran, PerChannel) and gran.axis % 2 == 0
    by_group = isinstance(gran, PerGroup) and gran.axis % 2 == 1
    grid = grid_shape(tuple(w.shape), gran)
    best_r = torch.ones_like(lo)
    if not (by_row or by_group):
        return best_r.reshape(grid)
    best_err = torch.full_like(lo, float("inf"))
    for i in range(int(max_shrink * n_grid + 1e-9) + 1):
        r = 1.0 - i / n_grid
        with torch.no_grad():
            delta = w - fake_quantize(clip_weight(w, torch.full_like(lo, r), scheme), scheme)
        err = output_error(delta, moment) if by_row else _group_errors(delta, moment, gran)
        better = err.reshape(-1) < best_err
        best_err = torch.where(better, err.reshape(-1), best_err)
        best_r = torch.where(better, torch.full_like(best_r, r), best_r)
    return best_r.reshape(grid)


def _group_errors(delta: torch.Tensor, moment: torch.Tensor, gran: Any) -> torch.Tensor:
    """``(out, n_groups)`` partial output errors, groups in the parameter-grid order."""
    g, n_in = gran.size, delta.shape[1]
    cols = [
        output_error(delta[:, k : k + g], moment[k : k + g, k : k + g]) for k in range(0, n_in, g)
    ]
    return torch.stack(cols, 1)


@dataclass
class AWQResult:
    """What AWQ decided: save it, and re-apply it to another copy of the float model.

    Attributes:
        scales: ``(group, scales)`` in the order they were folded.
        clips: layer name -> ``(clip ratios in the parameter grid, scheme)``.
    """

    scales: list[tuple[ScaleGroup, torch.Tensor]] = field(default_factory=list)
    clips: dict[str, tuple[torch.Tensor, Scheme]] = field(default_factory=dict)


def apply_awq(model: nn.Module, result: AWQResult) -> None:
    """Fold the scales, then clip the weights, exactly as :func:`run_awq` did.

    Args:
        model: the float model (modified in place).
        result: from :func:`run_awq`.
    """
    for group, scales in result.scales:
        fold_scales(model, group, scales)
    for name, (ratios, scheme) in result.clips.items():
        lin = model.get_submodule(name)
        with torch.no_grad():
            lin.weight.copy_(clip_weight(lin.weight, ratios, scheme))


def scale_groups_for(model: nn.Module, owned: list[str], example: Any) -> list[ScaleGroup]:
    """The scale groups (op -> linears) holding at least one of the ``owned`` layers.

    Args:
        model: the float model.
        owned: the Linear layers AWQ should scale and clip.
        example: one calibration batch to check folds numerically, or None (offloaded blocks:
            the family tables of ``algorithms.mapping`` are trusted without that check).

    Returns:
        The groups (owned layers in none of them are only clipped, logged).

    Raises:
        UnsupportedError: no owned layer could be paired with the op that feeds it.
    """
    if example is None:  # blocks load one at a time: no whole-model pass to verify folds
        log.warning("awq: blocks are offloaded; fold patterns come from the family tables of "
                    "algorithms.mapping without the numeric check of the whole model")  # fmt: skip
    groups = [g for g in find_scale_groups(model, example) if set(g.linear_names) & set(owned)]
    paired = {n for g in groups for n in g.linear_names}
    unpaired = sorted(set(owned) - paired)
    if not groups:
        raise UnsupportedError(
            f"awq: none of the {len(owned)} layer(s) could be paired with the op that feeds "
            f"them ({', '.join(unpaired[:6])}{', ...' if len(unpaired) > 6 else ''}): no block "
            f"matches the {'/'.join(f.name for f in FAMILIES)} tables of algorithms.mapping and "
            "the traced fallback found no norm->linear pair whose fold keeps the output; use "
            "'gptq' or 'rtn' for this model"
        )
    if unpaired:
        log.info("awq: no scale group for %s; clipping only", ", ".join(unpaired))
    return groups


def run_awq(
    model: nn.Module,
    schemes: dict[str, Scheme],
    owned: list[str],
    batches: Sequence[Any],
    opts: AWQOptions | None = None,
    progress: bool = False,
    layer_opts: dict[str, AWQOptions] | None = None,
    hooks: BlockHooks | None = None,
) -> AWQResult:
    """Search and apply AWQ block by block (the model is modified as it goes).

    Args:
        model: the float model.
        schemes: layer name -> weight scheme of every layer that will be quantized.
        owned: the Linear layers AWQ should scale and clip.
        batches: calibration batches.
        opts: options (default: :func:`current_awq_options`).
        progress: show a progress bar.
        layer_opts: per-layer options overriding ``opts`` (a scale group's ``n_grid`` is its
            first linear's; clipping options are each layer's own).
        hooks: passed to ``run_sequential`` (see ``calibration.offload``).

    Returns:
        The :class:`AWQResult` (for :func:`apply_awq`).
    """
    opts = opts or current_awq_options()
    per_layer = layer_opts or {}

    def opts_of(name: str) -> AWQOptions:
        return per_layer.get(name, opts)

    groups = scale_groups_for(model, owned, batches[0] if hooks is None else None)
    paired = {n for g in groups for n in g.linear_names}
    stats = InputStatsCollector(absmean=True)
    result, pending = AWQResult(), list(groups)
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    in_scale: dict[str, torch.Tensor] = {}
    to_clip: list[str] = []

    def finish(names: list[str]) -> dict[str, torch.Tensor]:
        for n in names:
            st = stats.pop(n)
            moments[n] = (st.second_moment(), st.abs_mean())
        to_clip.extend(n for n in names if n in owned and not n.endswith(opts_of(n).no_clip))
        for g in [g for g in pending if all(n in moments for n in g.linear_names)]:
            moment, mean = moments[g.linear_names[0]]
            weights = [model.get_submodule(n).weight for n in g.linear_names]
            found = awq_search(weights, [schemes.get(n) for n in g.linear_names], moment, mean,
                               opts_of(g.linear_names[0]).n_grid)  # fmt: skip
            fold_scales(model, g, found.scales)
            result.scales.append((g, found.scales))
            in_scale.update(dict.fromkeys(g.linear_names, found.scales))
            log.debug("awq %s: alpha %.2f, error %.4g (rtn %.4g)", g.prev_op, found.alpha,
                      found.error, found.error_identity)  # fmt: skip
            pending.remove(g)
        waiting = {n for g in pending for n in g.linear_names}
        for n in [n for n in to_clip if n not in waiting]:
            to_clip.remove(n)
            o = opts_of(n)
            if o.clip:
                moment, s = moments[n][0], in_scale.get(n)
                lin = model.get_submodule(n)
                moment = moment if s is None else moment / torch.outer(s, s)
                ratios = awq_clip(lin.weight, moment, schemes[n], o.max_shrink, o.clip_grid)
                with torch.no_grad():
                    lin.weight.copy_(clip_weight(lin.weight, ratios, schemes[n]))
                result.clips[n] = (ratios, schemes[n])
        for n in [n for n in moments if n not in waiting]:
            del moments[n]
        return {}

    watched = {n: model.get_submodule(n) for n in sorted(paired | set(owned))}
    run_sequential(model, batches, watched, stats, finish, desc="awq", progress=progress,
                   hooks=hooks)  # fmt: skip
    return result


@register_algorithm("awq", needs_data=True)
def awq(ctx: QuantContext) -> None:
    """Scale and clip the Linear layers whose spec names ``awq`` (weights stay float).

    Options come from :func:`awq_options`, then from each layer's
    ``LayerSpec.algorithm_args["awq"]``. The full result is not kept (call :func:`run_awq` for
    it); ``ctx.log["awq"]`` gets a summary.

    Args:
        ctx: the quantization context (modifies ``ctx.model``).
    """
    batches = ctx.require_data("awq")
    owned = [
        n for n, m in ctx.layers_for("awq").items() if isinstance(m, nn.Linear) and plain_forward(m)
    ]
    if not owned:
        return
    schemes = {n: s.weight for n, s in ctx.specs.items() if s.weight is not None}
    layer_opts = {n: _SLOT.for_spec(ctx.specs[n]) for n in owned}
    res = run_awq(ctx.model, schemes, owned, batches, progress=ctx.progress,
                  layer_opts=layer_opts, hooks=ctx.blocks)  # fmt: skip
    ctx.log["awq"] = {
        "groups": len(res.scales),
        "clipped_layers": len(res.clips),
        "mean_clip_ratio": float(torch.cat([r.reshape(-1) for r, _ in res.clips.values()]).mean())
        if res.clips
        else 1.0,
        "scales_max": {g.prev_op: round(float(s.max()), 3) for g, s in res.scales},
    }
