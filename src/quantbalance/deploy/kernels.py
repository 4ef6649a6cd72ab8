"""The one kernel table: which kernel runs which quantized layer, where, computing what.

``to_torch_engine`` builds every layer from :data:`KERNELS`, ``session(backend=...)`` reports
the engine's choices, and the search's latency model (``search/latency.py``) times the very
modules these entries build. The first entry that matches a layer, is available on this CPU and
computes the layer's numerics exactly wins; the last entry (``dequant``) always does.

==================  ===========================================  =============================
kernel              runs (layer: weight / activation)            numerics
==================  ===========================================  =============================
int8-onednn         Linear: signed symmetric per-channel,        exact integer GEMM (uint8 ×
                    ≤ 8 bits / 8-bit static, dynamic per-tensor  int8, int32 sums); on x86
                    or per-token                                 without VNNI only for weight
                                                                 codes within ±64
int8-onednn-conv    Conv2d (numeric padding): the same weights,  the same, as a convolution
                    8-bit static per-tensor input
int8-weight-pack    Linear: signed symmetric 8-bit per-channel,  float activations × int8
                    weight-only, in_features % 16 == 0; only     weights, float32 sums
                    where bf16 is native (else 33× slower)
int4-pack           Linear: uniform 4-bit, groups of 32..256     bf16 activations × int4
                    along the input, weight-only, out % 16 == 0  weights (bf16 rounding)
embedding           Embedding                                    dequantized table lookup
dequant             anything else                                the simulation itself, in the
                                                                 engine dtype (float speed)
==================  ===========================================  =============================
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from torch import nn

from quantbalance.deploy import torch_modules as tm
from quantbalance.deploy.torch_kernels import onednn_available
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, Scheme
from quantbalance.hardware import SATURATING_WEIGHT_ABSMAX, Hardware
from quantbalance.nn import KeepsForward, QuantModule, engine_layer
from quantbalance.plan import LayerSpec

log = logging.getLogger(__name__)

#: ``LayerDesc.layer`` of a layer quantized in place that runs its own ``forward`` (a subclass
#: with custom padding or reshapes): only the ``dequant`` entry runs it, as simulated.
OWN_FORWARD = "own-forward"


@dataclasses.dataclass(frozen=True)
class LayerDesc:
    """What the table needs to know about a quantized layer (from a module or from a spec).

    Attributes:
        layer: the float layer's class name (``Linear``, ``Conv2d``, ``Conv1d``, ``Embedding``),
            or :data:`OWN_FORWARD`.
        weight: the weight scheme.
        activation: the input scheme, or None (weight-only).
        act_mode: ``static`` or ``dynamic``.
        in_features: input features (Linear) or input channels (convolutions).
        out_features: output features (Linear) or output channels (convolutions).
        numeric_padding: convolutions only: padding given as numbers (not ``"same"``).
    """

    layer: str
    weight: Scheme
    activation: Scheme | None
    act_mode: str
    in_features: int
    out_features: int
    numeric_padding: bool = True

    @classmethod
    def of_module(cls, q: QuantModule) -> LayerDesc:
        """Describe a QuantModule.

        Args:
            q: the quantized module.

        Returns:
            Its description.
        """
        act = q.input_quantizer
        layer = OWN_FORWARD if isinstance(q, KeepsForward) else q.float_type.__name__
        return cls(
            layer=layer,
            weight=q.qweight.scheme,
            activation=None if act is None or layer == "Embedding" else act.scheme,
            act_mode=act.mode if act is not None else "static",
            in_features=int(q.weight_shape()[1]),
            out_features=int(q.weight_shape()[0]),
            numeric_padding=not isinstance(getattr(q, "padding", 0), str),
        )

    @classmethod
    def of_spec(cls, module: nn.Module, spec: LayerSpec) -> LayerDesc:
        """Describe a float layer quantized with ``spec`` (as ``qb.quantize`` would).

        Args:
            module: the float layer.
            spec: its spec (with a weight scheme).

        Returns:
            Its description.
        """
        assert spec.weight is not None
        plain = engine_layer(module)  # Conv1D: its Linear; None: the layer keeps its forward
        layer = OWN_FORWARD if plain is None else type(plain).__name__
        module = module if plain is None else plain
        act = None if layer == "Embedding" else spec.activation
        return cls(
            layer=layer,
            weight=spec.weight,
            activation=act,
            act_mode=spec.act_mode,
            in_features=int(module.weight.shape[1]),
            out_features=int(module.weight.shape[0]),
            numeric_padding=not isinstance(getattr(module, "padding", 0), str),
        )


def _int_codes(w: Scheme) -> bool:
    """Signed symmetric uniform per-output-channel codes that fit in int8."""
    g = w.granularity
    return (
        w.format_kind.integer and w.signed and w.symmetric and 2 <= w.bits <= 8
        and isinstance(g, PerChannel) and g.axis == 0
    )  # fmt: skip


def _int8_act(d: LayerDesc, modes: tuple[type, ...]) -> bool:
    a = d.activation
    return (
        a is not None and a.format_kind.integer and a.bits == 8 and isinstance(a.granularity, modes)
    )


def _match_int8_linear(d: LayerDesc) -> bool:
    return d.layer == "Linear" and _int_codes(d.weight) and _int8_act(d, (PerTensor, PerToken))


def _match_int8_conv(d: LayerDesc) -> bool:
    return (
        d.layer == "Conv2d" and d.numeric_padding and _int_codes(d.weight)
        and d.act_mode == "static" and _int8_act(d, (PerTensor,))
    )  # fmt: skip


def _match_int8_weight(d: LayerDesc) -> bool:
    return (
        d.layer == "Linear" and d.activation is None and _int_codes(d.weight)
        and d.weight.bits == 8 and d.in_features % 16 == 0
    )  # fmt: skip


def _match_int4(d: LayerDesc) -> bool:
    w, g = d.weight, d.weight.granularity
    return (
        d.layer == "Linear" and d.activation is None and w.format_kind.integer and w.bits == 4
        and isinstance(g, PerGroup) and g.axis in (-1, 1) and g.size in (32, 64, 128, 256)
        and d.in_features % g.size == 0 and d.out_features % 16 == 0
    )  # fmt: skip


def _needs_onednn(hw: Hardware) -> str | None:
    return None if onednn_available() else "this torch build has no oneDNN int8 kernels"


def _always(hw: Hardware) -> str | None:
    return None


def _native_bf16(hw: Hardware) -> str | None:
    if hw.native_bf16:
        return None
    return (
        "without native bf16, aten._weight_int8pack_mm ran 33x slower than the float model "
        "(minilm, batch 32, oneDNN held to AVX2): the dequantized form runs instead"
    )


def _exact_u8s8(d: LayerDesc, hw: Hardware) -> str | None:
    """Why uint8 × int8 pairs would saturate here, or None when they are exact."""
    absmax = 2 ** (d.weight.bits - 1)
    if not hw.onednn_int8_saturates or absmax <= SATURATING_WEIGHT_ABSMAX:
        return None
    isa = f" (ONEDNN_MAX_CPU_ISA={hw.onednn_max_isa})" if hw.onednn_max_isa else ""
    return (
        f"{d.weight.bits}-bit weight codes reach ±{absmax}, but this CPU's int8 kernels{isa} "
        f"have no VNNI and saturate int16 pair sums beyond ±{SATURATING_WEIGHT_ABSMAX}; "
        "quantize with hardware='avx2' (7-bit weights) to run int8 exactly here"
    )


def _exact(d: LayerDesc, hw: Hardware) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One row of the table.

    Attributes:
        name: short name (counted in ``engine.qb_engine_kernels``).
        runs: which quantized layers it runs.
        numerics: what it really computes.
        match: whether it runs a layer.
        unavailable: why it cannot run on this machine, or None.
        inexact: why its numerics would differ from the simulation here, or None.
        build: the fast module from a QuantModule and the engine dtype.
    """

    name: str
    runs: str
    numerics: str
    match: Callable[[LayerDesc], bool]
    unavailable: Callable[[Hardware], str | None]
    inexact: Callable[[LayerDesc, Hardware], str | None]
    build: Callable[[QuantModule, torch.dtype], nn.Module]


KERNELS: tuple[Kernel, ...] = (
    Kernel(
        "int8-onednn", "Linear, signed symmetric per-channel weights (<= 8 bits), 8-bit inputs "
        "(static, dynamic per-tensor or per-token)", "exact uint8 x int8 GEMM, int32 sums",
        _match_int8_linear, _needs_onednn, _exact_u8s8, lambda q, dt: tm.Int8Linear(q, dt),
    ),
    Kernel(
        "int8-onednn-conv", "Conv2d with numeric padding, the same weights, 8-bit static input",
        "exact uint8 x int8 convolution, int32 sums",
        _match_int8_conv, _needs_onednn, _exact_u8s8, lambda q, dt: tm.Int8Conv2d(q, dt),
    ),
    Kernel(
        "int8-weight-pack", "Linear, 8-bit signed symmetric per-channel weights, weight-only",
        "float activations x int8 weights (aten._weight_int8pack_mm)",
        _match_int8_weight, _native_bf16, _exact, lambda q, dt: tm.Int8WeightLinear(q, dt),
    ),
    Kernel(
        "int4-pack", "Linear, 4-bit uniform weights in groups of 32..256, weight-only, "
        "out_features % 16 == 0",
        "bf16 activations x int4 weights (bf16 rounding of the activations)",
        _match_int4, _always, _exact, lambda q, dt: tm.Int4Linear(q, dt),
    ),
    Kernel(
        "embedding", "Embedding", "dequantized table lookup",
        lambda d: d.layer == "Embedding", _always, _exact, lambda q, dt: tm.embedding(q, dt),
    ),
    Kernel(
        "dequant", "any other quantized layer", "the simulation itself in the engine dtype",
        lambda d: True, _always, _exact, lambda q, dt: tm.Dequant(q, dt),
    ),
)  # fmt: skip


def choose(desc: LayerDesc, hw: Hardware) -> tuple[Kernel, list[str]]:
    """The kernel that runs a layer here, and why better-placed exact ones did not.

    Args:
        desc: the layer.
        hw: this machine (``quantbalance.hardware.detect()``).

    Returns:
        ``(kernel, reasons)``: reasons name each matching kernel passed over because its
        numerics would differ from the simulation on this CPU (inexact). Kernels passed over
        only because they are unavailable or slow here are logged, not returned: the layer
        still computes exactly what was simulated.
    """
    reasons = []
    for k in KERNELS:
        if not k.match(desc):
            continue
        absent = k.unavailable(hw)
        if absent is not None:
            log.debug("kernel %s passed over: %s", k.name, absent)
            continue
        why = k.inexact(desc, hw)
        if why is None:
            return k, reasons
        reasons.append(f"{k.name}: {why}")
    raise AssertionError("the dequant kernel matches every layer")  # pragma: no cover


def engine_dtype(hw: Hardware) -> torch.dtype:
    """The engine's default dtype for float parts: bf16 only where bf16 is native.

    Args:
        hw: this machine.

    Returns:
        ``torch.bfloat16`` or ``torch.float32``.
    """
    return torch.bfloat16 if hw.native_bf16 else torch.float32
