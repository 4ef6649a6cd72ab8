"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

The scale and zero point come from the layer's weight observer, exactly as for round to nearest;
AdaRound only chooses, per weight, whether to round down or up. It learns ``V`` in

    ``W̃ = s · (clamp(⌊W/s⌋ + h(V) + z, qmin, qmax) - z)``,   ``h(V) = clip(σ(V)(ζ-γ) + γ, 0, 1)``

(the rectified sigmoid, ``ζ = 1.1, γ = -0.1``), minimising the layer-wise reconstruction error

    ``‖f(W x) - f(W̃ x̂)‖² + λ Σ (1 - |2h(V) - 1|^β)``

where ``x`` is the layer's input in the float model, ``x̂`` its input in the model whose earlier
layers are already quantized (fake-quantized by the layer's static activation scheme when it has
one), ``f`` the ReLU that follows the layer if any, and ``β`` decays from 20 to 2 after a warm-up
without regularisation, which pushes every ``h(V)`` to 0 or 1. The result is an ordinary
:class:`QuantizedTensor` of the scheme: same scale, learned codes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms.base import OptionsSlot, QuantContext, register_algorithm
from quantbalance.algorithms.cle import LAYERS, RELU_FUNCS
from quantbalance.calibration import FixedObserver, capture, make_observer
from quantbalance.calibration.sequential import swapped_weights
from quantbalance.formats import QuantizedTensor, Scheme, fake_quantize, quantize_tensor
from quantbalance.formats.granularity import expand_params
from quantbalance.formats.uniform import implied_zero_point
from quantbalance.nn import plain_forward, weight_matrix
from quantbalance.options import AdaRoundOptions
from quantbalance.plan import LayerSpec

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1


#: The ``adaround`` step's options (the former name of :class:`AdaRoundOptions`, kept).
AdaRoundConfig = AdaRoundOptions

_SLOT = OptionsSlot(AdaRoundOptions, "AdaRound", "adaround")

#: The options in force (defaults outside any ``adaround_options`` block).
current_adaround_options = _SLOT.current
#: ``with adaround_options(iters=200):`` sets options for the ``adaround`` step (context-local).
adaround_options = _SLOT.override


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clip(σ(V)(ζ - γ) + γ, 0, 1)``.

    Args:
        v: the rounding variables.

    Returns:
        Values in [0, 1].
    """
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def weight_qparams(
    w: torch.Tensor, scheme: Scheme, observer: str = "minmax"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point of a weight, from the observer round to nearest would use.

    Args:
        w: the 2-D weight matrix.
        scheme: a uniform scheme.
        observer: ``minmax`` or ``mse``.

    Returns:
        ``(scale, zero_point)`` in the scheme's grid shape.
    """
    obs = make_observer(observer, scheme.granularity)
    obs.update(w.detach().float())
    return obs.qparams(scheme)


def adaround(
    w: torch.Tensor,
    scheme: Scheme,
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: AdaRoundOptions | None = None,
    observer: str = "minmax",
) -> QuantizedTensor:
    """Learn the rounding of one weight matrix by layer-output reconstruction.

    Args:
        w: (out, in) weight matrix (convolutions flattened, as ``weight_matrix``).
        scheme: a uniform scheme of at least 2 bits.
        forward: ``forward(x, w2d) -> output`` of the layer (activation included if any).
        inputs: (N, ...) layer inputs ``x̂`` (sampled along the first dimension).
        targets: (N, ...) float outputs ``f(W x)``.
        config: optimisation settings (None: :func:`current_adaround_options`).
        observer: weight range observer (``minmax`` or ``mse``).

    Returns:
        The quantized weight with the observer's scale and the learned codes.
    """
    config = config or current_adaround_options()
    scale, zp = weight_qparams(w, scheme, observer)
    shape = tuple(w.shape)
    s = expand_params(scale.float(), shape, scheme.granularity)
    z = (
        torch.full_like(s, float(implied_zero_point(scheme)))
        if zp is None
        else expand_params(zp.float(), shape, scheme.granularity)
    )
    w_floor = torch.floor(w.detach().float() / s)
    rest = (w.detach().float() / s - w_floor).clamp(0.0, 1.0)
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
    opt = torch.optim.Adam([v], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    n = inputs.shape[0]
    warm = int(config.warmup * config.iters)

    def soft(h: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(w_floor + h + z, scheme.qmin, scheme.qmax) - z) * s

    for it in range(config.iters):
        idx = torch.randint(0, n, (min(config.batch, n),), generator=gen)
        h = rectified_sigmoid(v)
        out = forward(inputs[idx], soft(h))
        rec = (out - targets[idx]).pow(2).sum(1 if out.dim() > 1 else 0).mean()
        loss = rec
        if it >= warm:
            frac = (it - warm) / max(config.iters - warm, 1)
            beta = config.beta[1] + 0.5 * (config.beta[0] - config.beta[1]) * (
                1 + math.cos(math.pi * frac)
            )
            loss = rec + config.reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    hard = soft((v.detach() >= 0).float())
    return quantize_tensor(hard.to(w.dtype), scheme, FixedObserver(scale, zp, scheme.granularity))


@contextlib.contextmanager
def dequantized_weights(
    model: nn.Module, qweights: dict[str, QuantizedTensor]
) -> Iterator[nn.Module]:
    """Temporarily give ``model``'s layers their dequantized weights (the quantized model).

    Args:
        model: the float model.
        qweights: layer name -> quantized weight.

    Yields:
        The same model, restored on exit.
    """
    with swapped_weights(model, {name: qt.dequantize() for name, qt in qweights.items()}):
        yield model


def layer_io(
    model: nn.Module,
    name: str,
    batches: list[Any],
    inputs: bool = True,
    outputs: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Inputs and/or outputs of one layer over the calibration batches, via the pipeline.

    Args:
        model: the model to run.
        name: the layer.
        batches: calibration batches.
        inputs: keep the inputs.
        outputs: keep the outputs.
        progress: show a progress bar.

    Returns:
        ``(inputs, outputs)`` concatenated along the first dimension (None where not kept);
        a Linear's tensors are flattened to rows ``(tokens, features)``.
    """
    kept: dict[str, list[torch.Tensor]] = {"x": [], "y": []}
    linear = isinstance(model.get_submodule(name), nn.Linear)

    def keep(_n: str, _m: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        for key, t, wanted in (("x", inp[0], inputs), ("y", out, outputs)):
            if wanted:  # a copy: later in-place ops (ReLU(inplace=True)) must not alter it
                t = t.detach().float().clone()
                kept[key].append(t.reshape(-1, t.shape[-1]) if linear else t)

    capture(model, {name: model.get_submodule(name)}, batches, keep, name, progress)
    x, y = kept["x"], kept["y"]
    return (torch.cat(x) if x else None), (torch.cat(y) if y else None)


def followed_by_relu(model: nn.Module) -> set[str]:
    """Layers whose only consumer (through Identity/Dropout) is a ReLU, from an fx trace.

    Args:
        model: the model.

    Returns:
        Layer names (empty if the model cannot be traced).
    """
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return set()
    out = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], LAYERS):
            continue
        cur = node
        while len(cur.users) == 1:
            cur = next(iter(cur.users))
            mod = modules.get(cur.target) if cur.op == "call_module" else None
            if isinstance(mod, nn.ReLU) or (cur.op != "call_module" and cur.target in RELU_FUNCS):
                out.add(str(node.target))
            if not isinstance(mod, nn.Identity | nn.Dropout):
                break
    return out


def _layer_forward(
    mod: nn.Module, relu: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    shape = mod.weight.shape

    def fwd(x: torch.Tensor, w2d: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(mod, {"weight": w2d.reshape(shape)}, (x,))
        return torch.relu(out) if relu else out

    return fwd


def _supported(spec: LayerSpec, mod: nn.Module) -> bool:
    w = spec.weight
    ok = w is not None and w.format_kind.affine(w)
    return ok and isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d) and plain_forward(mod)


@register_algorithm("adaround", needs_data=True)
def adaround_step(ctx: QuantContext, config: AdaRoundOptions | None = None) -> None:
    """Plan step ``adaround``: learned rounding, layer by layer, in model order.

    Each layer's input ``x̂`` is captured with the earlier layers' quantized weights in place.
    Layers with a non-uniform or 1-bit scheme, and embeddings, are left to round to nearest.

    Args:
        ctx: the quantization context (fills ``ctx.qweights``).
        config: optimisation settings for every layer; None: :func:`adaround_options`, then
            each layer's ``LayerSpec.algorithm_args["adaround"]``.
    """
    data = ctx.require_data("adaround")
    relu = followed_by_relu(ctx.model)
    errors = {}
    for name, mod in ctx.layers_for("adaround").items():
        spec = ctx.specs[name]
        if name in ctx.qweights or not _supported(spec, mod):
            continue
        assert spec.weight is not None
        _, y = layer_io(ctx.model, name, data, inputs=False)
        with dequantized_weights(ctx.model, ctx.qweights):
            x_q, _ = layer_io(ctx.model, name, data, outputs=False)
        assert x_q is not None and y is not None
        if spec.activation is not None and spec.act_mode == "static":
            obs = make_observer(spec.act_observer)
            obs.update(x_q)
            a_scale, a_zp = obs.qparams(spec.activation)
            x_q = fake_quantize(x_q, spec.activation, a_scale, a_zp)
        fwd = _layer_forward(mod, name in relu)
        y = torch.relu(y) if name in relu else y
        w = weight_matrix(mod)
        opts = config or _SLOT.for_spec(spec)
        qt = adaround(w, spec.weight, fwd, x_q, y, opts, spec.weight_observer)
        ctx.qweights[name] = qt
        with torch.no_grad():
            err = float((fwd(x_q, qt.dequantize()) - y).pow(2).mean())
        errors[name] = err
        log.info("adaround %s: output MSE %.3g", name, err)
    ctx.log["adaround"] = {"output_mse": errors}
