"""quantbalance schemes in compressed-tensors terms, with the tensors its compressors take.

==============================  ==============================================================
quantbalance                     compressed-tensors ``QuantizationArgs``
==============================  ==============================================================
uniform, 2–8 bits                ``type=int``; symmetric stays symmetric; unsigned codes shift by
                                 ``2^(b-1)`` (same values: ``(q - zp)·s`` is unchanged)
fp8_e4m3                         ``type=float, num_bits=8``
PerTensor / PerChannel(axis=0)   ``strategy=tensor`` / ``channel`` (scale ``(out, 1)``)
PerGroup(g, last axis)           ``strategy=group, group_size=g`` (scale ``(out, in/g)``)
dynamic per-token activations    ``input_activations: strategy=token, dynamic=true``
static per-tensor activations    ``strategy=tensor`` with ``input_scale``/``input_zero_point``
==============================  ==============================================================

No form (:class:`NoFormError`, naming the layer): binary (1-bit), nf4, codebooks, fp8_e5m2, partial
groups (compressed-tensors rejects a row length that is not a multiple of the group size),
per-channel along another axis, SmoothQuant input factors left on a layer.
"""

from __future__ import annotations

from typing import Any

import torch

from quantbalance.errors import UnsupportedError
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, Scheme
from quantbalance.nn import QuantModule


class NoFormError(UnsupportedError):
    """A quantized layer whose scheme compressed-tensors cannot express exactly."""


def _strategy(s: Scheme, shape: tuple[int, ...], where: str, weight: bool) -> dict[str, Any]:
    g = s.granularity
    if isinstance(g, PerTensor):
        return {"strategy": "tensor"}
    if isinstance(g, PerToken) and not weight:
        return {"strategy": "token"}
    if isinstance(g, PerChannel) and weight and g.axis % len(shape) == 0:
        return {"strategy": "channel"}
    if isinstance(g, PerGroup) and weight and g.axis % len(shape) == len(shape) - 1:
        if shape[-1] % g.size:
            raise NoFormError(
                f"{where}: {s.label} on rows of {shape[-1]} ends with a partial group; "
                f"compressed-tensors needs a group size dividing {shape[-1]} (e.g. 32, 64)"
            )
        return {"strategy": "group", "group_size": g.size}
    raise NoFormError(
        f"{where}: granularity {g!r} has no compressed-tensors form; accepted: per tensor, "
        "per output channel, groups along the input axis (weights); per tensor or per token "
        "(activations)"
    )


def quant_args(
    s: Scheme, shape: tuple[int, ...], where: str, weight: bool = True, dynamic: bool = False
) -> Any:
    """The ``QuantizationArgs`` that dequantize exactly as ``s`` does.

    Args:
        s: the quantbalance scheme.
        shape: the quantized tensor's shape (weights) or ``(..., features)``.
        where: layer name (and role) for messages.
        weight: weights (True) or input activations (False).
        dynamic: activations whose range is computed per call.

    Returns:
        A ``compressed_tensors.quantization.QuantizationArgs``.

    Raises:
        NoFormError: the scheme has no exact compressed-tensors form.
    """
    # deferred: compressed_tensors is an optional extra
    from compressed_tensors.quantization import QuantizationArgs

    if s.kind == "fp8_e4m3":
        kind = {"type": "float", "num_bits": 8, "symmetric": True}
    elif s.format_kind.affine(s):
        kind = {"type": "int", "num_bits": s.bits, "symmetric": s.symmetric}
    else:
        raise NoFormError(
            f"{where}: {s.label} ({s.kind}, {s.bits} bits) has no compressed-tensors form; "
            "accepted: uniform 2–8 bit integers, fp8_e4m3"
        )
    strategy = _strategy(s, shape, where, weight)
    return QuantizationArgs(**kind, **strategy, dynamic=dynamic, observer=None)


def _zp_signed(zp: torch.Tensor, s: Scheme) -> torch.Tensor:
    shift = 0 if s.signed else 2 ** (s.bits - 1)
    return (zp.to(torch.int32) - shift).to(torch.int8)


def weight_tensors(m: QuantModule, args: Any) -> dict[str, torch.Tensor]:
    """``weight`` (the simulated, dequantized values), ``weight_scale`` and, for asymmetric
    schemes, ``weight_zero_point``, shaped as the compressors expect.

    The compressors re-derive the codes as ``round(w / scale) + zp``; since ``w`` is exactly
    ``(q - zp)·scale`` this gives back quantbalance's codes.

    Args:
        m: the quantized layer.
        args: its weight ``QuantizationArgs``.

    Returns:
        Local name -> tensor.
    """
    qt = m.qweight
    s = qt.scheme
    w = m.weight.detach().float()
    assert qt.scale is not None
    scale = qt.scale.float()
    rows = w.shape[0]
    if args.strategy == "tensor":
        scale = scale.reshape(1)
    elif args.strategy == "channel":
        scale = scale.reshape(rows, 1)
    else:
        scale = scale.reshape(rows, -1)
    out = {"weight": w, "weight_scale": scale}
    if s.format_kind.has_zero_point(s):
        assert qt.zero_point is not None
        out["weight_zero_point"] = _zp_signed(qt.zero_point.reshape(scale.shape), s)
    return out


def input_args(m: QuantModule, where: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """The input-activation ``QuantizationArgs`` of a layer and its static parameters.

    Args:
        m: the quantized layer.
        where: layer name for messages.

    Returns:
        ``(args or None, {"input_scale", "input_zero_point"} for static quantizers)``.

    Raises:
        NoFormError: SmoothQuant factors on the input, or an activation scheme with no form.
    """
    if getattr(m, "input_smooth", None) is not None:
        raise NoFormError(
            f"{where}: SmoothQuant input factors on this layer have no compressed-tensors "
            "form (fold them into the previous layer, or quantize without smoothquant)"
        )
    act = m.input_quantizer
    if act is None:
        return None, {}
    s = act.scheme
    dynamic = act.mode == "dynamic"
    args = quant_args(s, (1, 1), f"{where} (input)", weight=False, dynamic=dynamic)
    if act.mode == "dynamic":
        return args, {}
    params = {"input_scale": act.scale.detach().float().reshape(1)}
    if not s.symmetric:
        params["input_zero_point"] = _zp_signed(act.zero_point.reshape(1), s)
    return args, params
