"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights.

For linears reading the same input ``X`` (channels ``j``), ``s_j = max|X_j|^α / max|W_j|^(1-α)``
(``W_j``: column ``j`` of every consumer) divides the activation and multiplies the weights,
``(X / s)(s W)ᵀ = X Wᵀ``. The division is folded into the *producer* of ``X``, so the float model
is unchanged:

==========  ====================================================  ===============================
kind        producer                                              how it is folded
==========  ====================================================  ===============================
``norm``    a norm feeding only the group (pre-norm models)       its weight and bias / s
``linear``  a Linear reaching the group channel-wise (value       its rows and bias / s
            projection: attention output = P·V, rows of P sum 1)
``act``     an activation module (GELU, ...)                      :class:`ScaledActivation`
``input``   a container whose first input reaches only the group  its class gains
            (BERT's ``attention.self`` and ``intermediate``)      :class:`SmoothInput`
==========  ====================================================  ===============================

``norm``/``linear`` groups come from :mod:`quantbalance.algorithms.mapping` (shared with AWQ,
with its traced fallback); ``act``/``input`` groups from :data:`EXTRA_GROUPS`. BERT is post-LN:
its LayerNorm outputs are also the residual stream, so the division goes into the attention and
feed-forward containers' inputs (a per-channel multiply at run time, which a deployment fuses
into the activation quantizer). ``alpha="auto"`` picks per group the α in :data:`ALPHAS` (or no
smoothing) that minimises the quantized consumers' output error on
sampled calibration rows: MiniLM's largest activation channel also has the largest weights,
where the paper's α = 0.5 makes w8a8 worse.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from quantbalance.algorithms.base import OptionsSlot, QuantContext, register_algorithm
from quantbalance.algorithms.mapping import ScaleGroup, find_scale_groups, fold_scales
from quantbalance.calibration import capture, make_observer
from quantbalance.calibration.sequential import find_blocks
from quantbalance.errors import UnsupportedError
from quantbalance.formats import fake_quantize, qparams_from_range, quantize_tensor
from quantbalance.nn import QuantModule
from quantbalance.options import SmoothQuantOptions
from quantbalance.plan import LayerSpec, preset
from quantbalance.transform import replace_module

log = logging.getLogger(__name__)

Kind = Literal["norm", "linear", "act", "input"]
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
N_ROWS = 2048  # calibration rows per group kept for the α search
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
EXTRA_GROUPS: dict[str, tuple[tuple[str, Kind, tuple[str, ...]], ...]] = {
    "bert": (
        ("attention.self", "input", _QKV),
        ("intermediate", "input", ("intermediate.dense",)),
        ("intermediate.intermediate_act_fn", "act", ("output.dense",)),
    ),
}


_SLOT = OptionsSlot(SmoothQuantOptions, "SmoothQuant", "smoothquant")

#: ``with smoothquant_options(alpha=0.8):`` sets options for the ``smoothquant`` step.
smoothquant_options = _SLOT.override


@dataclass(frozen=True)
class SmoothGroup:
    """A producer and the linears that read its output.

    Attributes:
        producer: the module whose output (``input``: whose first input) is smoothed.
        kind: ``norm``, ``linear``, ``act`` or ``input`` (see the module table).
        consumers: Linear names whose input columns are multiplied by ``s``.
    """

    producer: str
    kind: Kind
    consumers: tuple[str, ...]


class ScaledActivation(nn.Module):
    """``act(x) / scales``: an activation carrying SmoothQuant's ``1/s`` per output channel.

    Args:
        act: the original activation module.
        scales: (C,) scales ``s``.
    """

    def __init__(
        self, act: nn.Module, scales: torch.Tensor, consumers: tuple[str, ...] = ()
    ) -> None:
        super().__init__()
        self.act = act
        self.smooth_consumers = consumers
        self.register_buffer("scales", scales.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation, then divide each channel by its scale."""
        return self.act(x) / self.scales.to(x.dtype)


class SmoothInput:
    """Mixin: ``forward(x / smooth_scales, ...)`` on the first argument (names unchanged)."""

    smooth_scales: torch.Tensor
    smooth_consumers: tuple[str, ...]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Call the original forward on the smoothed first argument."""
        return super().forward(x / self.smooth_scales.to(x.dtype), *args, **kwargs)  # type: ignore[misc]


def smoothquant_groups(model: nn.Module, example_batch: Any = None) -> list[SmoothGroup]:
    """Every group SmoothQuant can fold in ``model``.

    Args:
        model: the float model.
        example_batch: a batch for the traced fallback of ``mapping.find_scale_groups``.

    Returns:
        The groups (empty if nothing could be paired).
    """
    mods = dict(model.named_modules())
    groups = [
        SmoothGroup(g.prev_op, "linear" if isinstance(mods[g.prev_op], nn.Linear) else "norm",
                    g.linear_names)
        for g in find_scale_groups(model, example_batch)
    ]  # fmt: skip
    found = find_blocks(model)
    for i, table in itertools.product(range(len(found[1]) if found else 0), EXTRA_GROUPS.values()):
        at = f"{found[0]}.{i}."  # type: ignore[index]
        for prod, kind, cons in table:
            g = SmoothGroup(at + prod, kind, tuple(at + c for c in cons))
            lin = [mods.get(c) for c in g.consumers]
            if (
                g.producer in mods
                and all(isinstance(m, nn.Linear) for m in lin)
                and len({m.in_features for m in lin}) == 1  # type: ignore[union-attr]
            ):
                groups.append(g)
    return groups


def smooth_scales(
    act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float = 0.5
) -> torch.Tensor:
    """SmoothQuant's per-channel scales ``s_j = max|X_j|^α / max|W_j|^(1-α)``.

    Args:
        act_absmax: (C,) per-channel maximum of ``|X|`` over the calibration data.
        weights: the consumers' weights, each (out_i, C).
        alpha: migration strength in [0, 1] (0: nothing moves, 1: all into the weights).

    Returns:
        (C,) positive scales (1 for channels that were never non-zero).

    Example:
        >>> smooth_scales(torch.tensor([4.0, 1.0]), [torch.ones(3, 2)]).tolist()
        [2.0, 1.0]
    """
    w_absmax = torch.cat([w.detach().abs().float() for w in weights]).amax(0).clamp(min=1e-5)
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.pow(1 - alpha)
    return torch.where(act_absmax > 0, s.clamp(min=1e-5), torch.ones_like(s))


@torch.no_grad()
def apply_smoothing(model: nn.Module, group: SmoothGroup, s: torch.Tensor) -> None:
    """Fold ``1/s`` into the producer and ``s`` into the consumers' input columns.

    Args:
        model: the float model (modified in place; its output is unchanged).
        group: the group.
        s: (C,) positive scales.
    """
    if group.kind in ("norm", "linear"):
        fold_scales(model, ScaleGroup(group.producer, group.consumers), s)
        return
    prod = model.get_submodule(group.producer)
    if group.kind == "act":
        if isinstance(prod, ScaledActivation):
            prod.scales.mul_(s)
        else:
            replace_module(model, group.producer, ScaledActivation(prod, s, group.consumers))
    elif isinstance(prod, SmoothInput):
        prod.smooth_scales.mul_(s)
    else:
        prod.__class__ = type(f"Smooth{type(prod).__name__}", (SmoothInput, type(prod)), {})
        prod.register_buffer("smooth_scales", s.detach().clone())
        prod.smooth_consumers = group.consumers
    for c in group.consumers:
        lin = model.get_submodule(c)
        lin.weight.mul_(s.to(lin.weight.dtype))


def _output_error(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, weights: list[torch.Tensor],
    spec: LayerSpec, s: torch.Tensor,
) -> float:  # fmt: skip
    """Squared output error of the quantized consumers on rows ``x`` smoothed by ``s``.

    Static ranges follow the spec's observer (``minmax``: the exact range of all the data).
    """
    xs, act = x / s, spec.activation
    if act is not None and spec.act_mode == "static":
        if spec.act_observer == "minmax":
            scale, zp = qparams_from_range((lo / s).min(), (hi / s).max(), act)
        else:
            obs = make_observer(spec.act_observer)
            obs.update(xs)
            scale, zp = obs.qparams(act)
        xs = fake_quantize(xs, act, scale, zp)
    elif act is not None:
        xs = fake_quantize(xs, act)
    err = 0.0
    for w in weights:
        wq = w
        if spec.weight is not None:
            wobs = make_observer(spec.weight_observer, spec.weight.granularity)
            wq = quantize_tensor(w * s, spec.weight, wobs).dequantize()
        err += float((xs @ wq.T - x @ w.T).pow(2).sum())
    return err


def smooth_model(
    model: nn.Module,
    calib_data: list[Any],
    alpha: float | Literal["auto"] = 0.5,
    layers: set[str] | None = None,
    specs: dict[str, LayerSpec] | None = None,
    progress: bool = False,
) -> dict[str, float | None]:
    """Smooth every group of ``model`` in place (float output unchanged).

    Args:
        model: the float model.
        calib_data: calibration batches (activation statistics are collected over them).
        alpha: migration strength, or ``"auto"`` (per-group search over :data:`ALPHAS`).
        layers: only groups with a consumer in this set (None: all groups).
        specs: consumer name -> LayerSpec for the ``auto`` search (default: ``w8a8``).
        progress: show a progress bar.

    Returns:
        producer name -> the α applied, or None where no smoothing won the search.
    """
    groups = [
        g for g in smoothquant_groups(model, calib_data[0])
        if layers is None or set(g.consumers) & layers
    ]  # fmt: skip
    if not groups:
        names = ", ".join(sorted(layers)) if layers else "(every Linear)"
        raise UnsupportedError(
            f"smoothquant: could not pair layers {names} with a producer: no architecture "
            "mapping matched and the traced fallback found no foldable norm/linear pairs"
        )
    heads = {g.consumers[0]: g for g in groups}
    stats: dict[str, list[torch.Tensor]] = {}
    gen = torch.Generator().manual_seed(0)
    per_batch = max(1, N_ROWS // len(calib_data))

    def stat(name: str, _m: nn.Module, inp: tuple[Any, ...], _out: Any) -> None:
        x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
        new = [x.amin(0), x.amax(0), x[torch.randperm(len(x), generator=gen)[:per_batch]]]
        if name in stats:
            old = stats[name]
            new = [old[0].minimum(new[0]), old[1].maximum(new[1]), torch.cat([old[2], new[2]])]
        stats[name] = new

    mods = {n: model.get_submodule(n) for n in heads}
    capture(model, mods, calib_data, stat, desc="smoothquant statistics", progress=progress)
    default = preset("w8a8").layers["re:.*"]
    applied: dict[str, float | None] = {}
    for head, g in heads.items():
        if head not in stats:
            log.warning("smoothquant: %s saw no calibration data; not smoothed", head)
            continue
        lo, hi, rows = stats[head]
        weights = [model.get_submodule(c).weight.detach().float() for c in g.consumers]
        absmax = torch.maximum(lo.abs(), hi.abs())
        a_g: float | str = alpha
        if specs is not None and head in specs and specs[head].algorithm_args.get("smoothquant"):
            a_spec = _SLOT.for_spec(specs[head]).alpha
            a_g = "auto" if a_spec is None else a_spec  # 0.0 is a strength, not "auto"
        choice: float | None = None if a_g == "auto" else float(a_g)
        if a_g == "auto":
            spec = (specs or {}).get(head) or default
            best = _output_error(rows, lo, hi, weights, spec, torch.ones_like(lo))
            for a in ALPHAS:
                err = _output_error(rows, lo, hi, weights, spec, smooth_scales(absmax, weights, a))
                choice, best = (a, err) if err < best else (choice, best)
        if choice is not None:
            apply_smoothing(model, g, smooth_scales(absmax, weights, choice))
        applied[g.producer] = choice
        log.info("smoothquant: %s (%s) -> %s: alpha %s", g.producer, g.kind, g.consumers, choice)
    return applied


@register_algorithm("smoothquant", needs_data=True)
def smoothquant(ctx: QuantContext) -> None:
    """Plan step ``smoothquant``: per-group α search against the consumers' own schemes.

    A fixed α comes from ``smoothquant_options(alpha=...)`` or, per group (its first
    consumer's spec), from ``algorithm_args={"smoothquant": {"alpha": 0.8}}``. The next step
    chooses the weights (round to nearest by default); static activation ranges are calibrated
    on the smoothed model.

    Args:
        ctx: the quantization context (its float model is modified in place).
    """
    data = ctx.require_data("smoothquant")
    layers = set(ctx.layers_for("smoothquant"))
    alpha = "auto" if _SLOT.current().alpha is None else _SLOT.current().alpha
    chosen = smooth_model(ctx.model, data, alpha, layers, ctx.specs, ctx.progress)  # type: ignore[arg-type]
    ctx.log["smoothquant"] = {"alpha": chosen}


def lower_smoothing(model: nn.Module) -> list[str]:
    """Move run-time SmoothQuant divisions into the quantized consumers' input factors.

    A :class:`ScaledActivation` or :class:`SmoothInput` producer divides by ``s`` at run time;
    when every consumer of its group is a quantized module, the division becomes each consumer's
    ``input_smooth = 1/s`` (applied just before its input quantizer, where a deployment fuses
    it into the quantization) and the producer returns to its original form. The model's output
    is unchanged up to float rounding. Call after the modules are swapped.

    Args:
        model: a model whose consumers are QuantModules (modified in place).

    Returns:
        The producers lowered (producers with a float consumer are left as they are).
    """
    lowered = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, ScaledActivation):
            s, consumers = mod.scales, mod.smooth_consumers
        elif isinstance(mod, SmoothInput):
            s, consumers = mod.smooth_scales, mod.smooth_consumers
        else:
            continue
        cons = [model.get_submodule(c) for c in consumers]
        if not cons or not all(isinstance(c, QuantModule) for c in cons):
            log.info("smoothquant: %s keeps its run-time division (a consumer is float)", name)
            continue
        inv = 1.0 / s.detach().float()
        for c in cons:
            assert isinstance(c, QuantModule)
            old = c.input_smooth
            c.set_input_smooth(inv if old is None else old * inv)
        if isinstance(mod, ScaledActivation):
            replace_module(model, name, mod.act)
        else:
            del mod._buffers["smooth_scales"]
            del mod.smooth_consumers
            mod.__class__ = type(mod).__bases__[1]
        lowered.append(name)
    return lowered
