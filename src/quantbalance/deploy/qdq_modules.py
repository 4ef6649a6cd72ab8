"""Export modules: quantized layers rewritten as explicit Q/DQ computations.

:func:`export_module` swaps each QuantModule of a model copy for one of these; their forwards
call the custom ops of :mod:`quantbalance.deploy.qdq_ops`, which the exporter turns into
``QuantizeLinear`` / ``DequantizeLinear`` / ``DynamicQuantizeLinear`` nodes (see
:mod:`quantbalance.deploy.onnx_export` for the table of what each layer becomes).
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from quantbalance.deploy.qdq_ops import dequantize_linear, dynamic_quantize_linear, quantize_linear
from quantbalance.errors import UnsupportedError
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, QuantizedTensor
from quantbalance.nn import (
    ActQuantizer,
    KeepsForward,
    QConv1d,
    QConv2d,
    QEmbedding,
    QLinear,
    QuantAdd,
    QuantModule,
    from_matrix,
)
from quantbalance.transform import replace_module

log = logging.getLogger(__name__)


class WeightDQ(nn.Module):
    """A weight as integer codes + DequantizeLinear parameters; ``forward()`` dequantizes it.

    Args:
        qt: the quantized weight.
        transpose: store the 2-D weight transposed (``(in, out)``, the ``MatMul`` layout).
        shape: final float shape (convolutions), reached by reshaping codes or the float result.
    """

    def __init__(
        self, qt: QuantizedTensor, transpose: bool = False, shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.shape = tuple(shape or qt.shape)
        self.pack4, self.emulated = False, ""
        parts = dq_parts(qt)
        if parts is None:
            self.emulated = f"{qt.scheme.label} weights"
            w = qt.dequantize().float()
            w = w.t() if transpose else w.reshape(self.shape)
            self.register_buffer("weight", w.contiguous())
            self.axis, self.block, self.reshape = 0, 0, None
            return
        codes, scale, zp, axis, block, self.pack4 = parts
        if transpose:
            codes = codes.t()
            if scale.dim() == 2:
                scale, zp = scale.t(), zp.t()
            axis = 1 - axis if scale.dim() else axis
        if block == 0 and scale.dim() <= 1 and axis == 0 and len(self.shape) > 2:
            codes = codes.reshape(self.shape)  # per-channel conv: DQ directly in 4-D
        self.axis, self.block = axis, block
        self.reshape = self.shape if codes.dim() != len(self.shape) else None
        self.register_buffer("q", codes.contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("zero_point", zp.contiguous())

    def forward(self) -> torch.Tensor:
        """The dequantized weight."""
        if "weight" in self._buffers:
            w = self.weight
        else:
            w = dequantize_linear(self.q, self.scale, self.zero_point, self.axis, self.block)
        return w if self.reshape is None else w.reshape(self.reshape)


def dq_parts(
    qt: QuantizedTensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, bool] | None:
    """DequantizeLinear inputs for a uniform QuantizedTensor, in its own shape.

    Signed symmetric 4..8-bit codes stay signed (int4 / int8) with zero point 0 (TensorRT's
    form; 7-bit weights of ``hardware="avx2"`` Plans are int8 within ±64); everything
    else becomes unsigned codes ``q - qmin`` with zero point ``zp - qmin`` (the same values).

    Args:
        qt: the quantized tensor.

    Returns:
        ``(codes, scale, zero_point, axis, block_size, is_4bit)`` or None if the scheme has no
        affine integer form (nf4, codebook, fp8, 1-bit).
    """
    s = qt.scheme
    if not s.format_kind.affine(s) or qt.scale is None:
        return None
    u = qt.codes().to(torch.int32)
    scale = qt.scale.float()
    if s.signed and s.symmetric and s.bits >= 4:  # 5..7-bit (e.g. hardware="avx2"): int8
        codes, zp = (u + s.qmin).to(torch.int8), torch.zeros(scale.shape, dtype=torch.int8)
    else:
        zp_q = (s.qmin + s.qmax + 1) // 2 if qt.zero_point is None else qt.zero_point.int()
        zp = (torch.as_tensor(zp_q) - s.qmin).expand(scale.shape).to(torch.uint8)
        codes = u.to(torch.uint8)
    gran, nd = s.granularity, len(qt.shape)
    if isinstance(gran, PerTensor):
        axis, block = 0, 0
    elif isinstance(gran, PerChannel):
        axis, block = gran.axis % nd, 0
    elif isinstance(gran, PerToken) and nd == 2:
        axis, block = 0, 0
    elif isinstance(gran, PerToken):
        axis, block = nd - 1, qt.shape[-1]
        scale, zp = scale.unsqueeze(-1), zp.unsqueeze(-1)
    else:
        assert isinstance(gran, PerGroup)
        axis, block = gran.axis % nd, gran.size
        scale, zp = scale.movedim(-1, axis), zp.movedim(-1, axis)
    return codes, scale, zp.contiguous(), axis, block, s.bits <= 4


class QDQAct(nn.Module):
    """Export form of a frozen :class:`ActQuantizer` (see the module table).

    Args:
        act: the quantizer.
        name: layer name for messages.
    """

    def __init__(self, act: ActQuantizer, name: str) -> None:
        super().__init__()
        s = act.scheme
        if act.mode == "static" and act.observing:
            raise UnsupportedError(f"layer {name!r}: static activation ranges not calibrated yet")
        self.emulate, self.kind = None, "static"
        if act.mode == "dynamic":
            self.kind = "dynamic" if s.bits == 8 and not s.symmetric else "emulate"
            if isinstance(s.granularity, PerToken):
                # ONNX Runtime 1.31 fuses a per-token (blocked) DQ into MatMulIntegerToFloat,
                # which then fails at run time ("per-channel not supported").
                self.kind = "emulate"
        elif s.bits != 8:
            self.kind = "emulate"
        self.emulated = f"{s.label} activations ({act.mode})" if self.kind == "emulate" else ""
        if self.kind == "emulate":
            self.emulate = act
        elif self.kind == "static":
            zp = act.zero_point.int() if not s.symmetric else (s.qmin + s.qmax + 1) // 2
            if s.signed and s.symmetric:
                zp = torch.zeros((), dtype=torch.int8)
            else:  # uint8 codes q - qmin: the same values
                zp = (torch.as_tensor(zp) - s.qmin).reshape(()).to(torch.uint8)
            self.register_buffer("scale", act.scale.float().reshape(()).clone())
            self.register_buffer("zero_point", zp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` with real Q/DQ nodes."""
        if self.emulate is not None:
            return self.emulate(x)
        if self.kind == "dynamic":
            q, scale, zp = dynamic_quantize_linear(x)
            return dequantize_linear(q, scale, zp, 0, 0)
        q = quantize_linear(x, self.scale, self.zero_point, 0, 0)
        return dequantize_linear(q, self.scale, self.zero_point, 0, 0)


class _SmoothQDQ(nn.Module):
    """SmoothQuant's per-channel input factors (a ``Mul``) before the activation's Q/DQ."""

    def __init__(self, factors: torch.Tensor, qdq: nn.Module) -> None:
        super().__init__()
        self.register_buffer("factors", factors.detach().float().clone())
        self.qdq = qdq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale the channels, then quantize-dequantize."""
        return self.qdq(x * self.factors)


def _act(m: QuantModule, name: str) -> nn.Module:
    qdq = nn.Identity() if m.input_quantizer is None else QDQAct(m.input_quantizer, name)
    return qdq if m.input_smooth is None else _SmoothQDQ(m.input_smooth, qdq)


class QDQLinear(nn.Module):
    """``MatMul(Q/DQ(x), DQ(W int (in, out)))`` + bias: the layout ONNX Runtime fuses."""

    def __init__(self, m: QLinear, name: str) -> None:
        super().__init__()
        self.act = _act(m, name)
        self.w = WeightDQ(m.qweight, transpose=True)
        self.bias = m.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized linear."""
        y = torch.matmul(self.act(x), self.w())
        return y if self.bias is None else y + self.bias


class QDQConv(nn.Module):
    """``Conv(Q/DQ(x), DQ(W int8, axis=0))`` for 1-D and 2-D convolutions."""

    def __init__(self, m: QuantModule, name: str) -> None:
        super().__init__()
        self.act = _act(m, name)
        self.w = WeightDQ(m.qweight, shape=m.weight_shape())
        self.bias = m.bias
        self.fn = F.conv1d if isinstance(m, QConv1d) else F.conv2d
        self.args = (m.stride, m.padding, m.dilation, m.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized convolution."""
        return self.fn(self.act(x), self.w(), self.bias, *self.args)


class QDQEmbedding(nn.Module):
    """8-bit tables: ``Gather`` codes and scales, then blocked DQ; else ``DQ`` -> ``Gather``."""

    def __init__(self, m: QEmbedding) -> None:
        super().__init__()
        self.w = WeightDQ(m.qweight)
        self.dim = m.embedding_dim
        g = m.qweight.scheme.granularity
        rows = isinstance(g, PerToken) or (isinstance(g, PerChannel) and g.axis % 2 == 0)
        groups = isinstance(g, PerGroup) and g.axis % 2 == 1
        self.gather_first = "q" in self.w._buffers and not self.w.pack4 and (rows or groups)
        self.block = self.dim if rows else getattr(g, "size", 0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Look up rows."""
        if not self.gather_first:
            return F.embedding(idx, self.w())
        flat = idx.reshape(-1)
        q = self.w.q.index_select(0, flat).reshape(*idx.shape, self.dim)
        scale = self.w.scale.reshape(self.w.q.shape[0], -1).index_select(0, flat)
        zp = self.w.zero_point.reshape(self.w.q.shape[0], -1).index_select(0, flat)
        scale, zp = scale.reshape(*idx.shape, -1), zp.reshape(*idx.shape, -1)
        return dequantize_linear(q, scale, zp, -1, self.block)


class _LaidOut(nn.Module):
    """A dequantized weight matrix put back in the float layer's layout (a transpose)."""

    def __init__(self, w: WeightDQ, layout: str, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.w, self.layout, self.shape = w, layout, shape

    def forward(self) -> torch.Tensor:
        """The weight in the float layer's shape."""
        return from_matrix(self.layout, self.w(), self.shape)


def _weight_form(m: KeepsForward) -> nn.Module:
    shape = m.weight_shape()
    if m.weight_layout in ("rows", "conv"):
        return WeightDQ(m.qweight, shape=shape)  # DQ in the weight's own shape
    return _LaidOut(WeightDQ(m.qweight), m.weight_layout, shape)


def export_module(qmodel: nn.Module) -> nn.Module:
    """A float32 copy of ``qmodel`` whose quantized modules emit real Q/DQ ops.

    Args:
        qmodel: a quantized model (``qb.quantize`` output).

    Returns:
        The export model (runs in torch too, matching the simulation).
    """
    model = copy.deepcopy(qmodel).float().eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, QLinear):
            replace_module(model, name, QDQLinear(m, name))
        elif isinstance(m, QEmbedding):
            replace_module(model, name, QDQEmbedding(m))
        elif isinstance(m, QConv1d | QConv2d):
            replace_module(model, name, QDQConv(m, name))
        elif isinstance(m, KeepsForward):  # its own forward, traced on Q/DQ forms
            m.use_forms(_weight_form(m), _act(m, name))
        elif isinstance(m, QuantAdd):  # Q/DQ on both inputs and the sum: ORT's QLinearAdd
            for part in ("a", "b", "out"):
                setattr(m, part, QDQAct(getattr(m, part), f"{name}.{part}"))
    emulated: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if getattr(m, "emulated", ""):
            emulated.setdefault(m.emulated, []).append(name.rpartition(".")[0])
    for what, names in emulated.items():
        log.warning(
            "%s have no integer QDQ form: exported as exact float emulation in %d layers (%s%s)",
            what, len(names), ", ".join(names[:3]), ", ..." if len(names) > 3 else "",
        )  # fmt: skip
    return model
