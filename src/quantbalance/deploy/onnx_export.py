"""ONNX export of a quantized model as a standard QDQ graph (opset 21).

How: the quantized modules of a copy of the model are swapped for export modules whose forward
calls three small custom ops (``quantbalance::quantize_linear``, ``dequantize_linear``,
``dynamic_quantize_linear``); the ``torch.export``-based exporter (``torch.onnx.export(...,
dynamo=True)``) translates each one into exactly one ONNX node, so the graph holds the codes
themselves as integer initializers. We chose this over the deprecated TorchScript exporter's
``fake_quantize_*`` ops, which produce float weights behind a Q/DQ pair and cannot express
blocked 4-bit weights.

What each layer becomes (``x`` float input, ``W`` codes stored once, never as float):

=========================  ==================================================================
quantbalance                ONNX
=========================  ==================================================================
int8 symmetric weights      ``DequantizeLinear(W int8 (in, out), scale, zp=0, axis=1)`` →
(per-channel)               ``MatMul`` (+ bias ``Add``); convolutions ``axis=0`` → ``Conv``
asymmetric / ≤ 4-bit        ``uint8`` / ``uint4`` (``int4`` when signed symmetric) codes with
weights, groups of g        zero points; groups as blocked ``DequantizeLinear(block_size=g)``
static activations          ``QuantizeLinear`` → ``DequantizeLinear``, per tensor; asymmetric
                            ranges as ``uint8`` (``q + 128``: the same values), symmetric as
                            ``int8`` with zero point 0
dynamic activations         per tensor asymmetric: ``DynamicQuantizeLinear`` → ``DequantizeLinear``;
                            other dynamic schemes: exact float emulation (see below)
embeddings (8-bit)          ``Gather`` of the int8 rows and of their scales → blocked
                            ``DequantizeLinear``; 4-bit tables: ``DequantizeLinear`` → ``Gather``
=========================  ==================================================================

Exported as exact float emulation, with a warning: other weight kinds (nf4, codebooks, fp8,
binary), activations of other widths, symmetric and per-token dynamic activations. (A per-token
``QuantizeLinear`` — blocked, one block per token — is valid ONNX, but ONNX Runtime 1.31 fuses its
DQ into ``MatMulIntegerToFloat``, which rejects non-scalar zero points at run time.)

ONNX Runtime fuses these groups into integer kernels (``MatMulIntegerToFloat``,
``DynamicQuantizeMatMul``, ``MatMulNBits``): see ``quantbalance.deploy.ort``.

TensorRT: this explicit-quantization QDQ form is what TensorRT consumes (``trtexec
--onnx=model.onnx --int8`` builds INT8 kernels from the Q/DQ placement, no calibrator needed).
TensorRT requires symmetric quantization: int8 weights with zero point 0 (our int8 presets are
symmetric per channel, axis 0) and *activations with zero point 0*. Our default activations
(``w8a8``) are asymmetric (uint8 with a zero point), which TensorRT rejects; for TensorRT, build
the Plan with symmetric activations, ``Scheme(8, symmetric=True, granularity=PerTensor())``, which
export as int8 Q/DQ with zero point 0. TensorRT's 4-bit path is weight-only blocked int4
(symmetric, ``int4`` codes, zero point 0): use ``Scheme(4, granularity=PerGroup(size=128))``.
Our 8-bit embedding tables dequantize *gathered* (non-constant) scales, which TensorRT does not
accept as Q/DQ parameters: keep embeddings float for TensorRT (``skip`` them in the Plan).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnxscript import opset21 as op
from torch import nn

from quantbalance.errors import UnsupportedError
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, QuantizedTensor
from quantbalance.io import atomic_write
from quantbalance.nn import ActQuantizer, QConv1d, QEmbedding, QLinear, QuantModule

log = logging.getLogger(__name__)

OPSET = 21


def _expand(p: torch.Tensor, shape: torch.Size, axis: int, block: int) -> torch.Tensor:
    """Broadcast a Q/DQ parameter to ``shape`` with ONNX semantics (per-tensor/axis/block)."""
    if p.dim() == 0:
        return p
    ax = axis % len(shape)
    if block > 0:
        return p.repeat_interleave(block, dim=ax).narrow(ax, 0, shape[ax])
    view = [1] * len(shape)
    view[ax] = -1
    return p.reshape(view)


@torch.library.custom_op("quantbalance::dequantize_linear", mutates_args=())
def dequantize_linear(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, block_size: int
) -> torch.Tensor:
    """ONNX ``DequantizeLinear``: ``(x - zero_point) * scale`` in float32."""
    zp = _expand(zero_point, x.shape, axis, block_size).float()
    return (x.float() - zp) * _expand(scale, x.shape, axis, block_size).float()


@dequantize_linear.register_fake
def _(x, scale, zero_point, axis, block_size):
    return torch.empty(x.shape, dtype=torch.float32, device=x.device)


@torch.library.custom_op("quantbalance::quantize_linear", mutates_args=())
def quantize_linear(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, block_size: int
) -> torch.Tensor:
    """ONNX ``QuantizeLinear``: ``saturate(round(x / scale) + zero_point)`` in zero_point's type."""
    info = torch.iinfo(zero_point.dtype)
    zp = _expand(zero_point, x.shape, axis, block_size).float()
    v = torch.round(x.float() / _expand(scale, x.shape, axis, block_size).float()) + zp
    return v.clamp(info.min, info.max).to(zero_point.dtype)


@quantize_linear.register_fake
def _(x, scale, zero_point, axis, block_size):
    return torch.empty(x.shape, dtype=zero_point.dtype, device=x.device)


@torch.library.custom_op("quantbalance::dynamic_quantize_linear", mutates_args=())
def dynamic_quantize_linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX ``DynamicQuantizeLinear``: uint8 codes, scale and zero point."""
    lo = x.float().min().clamp(max=0.0)
    hi = x.float().max().clamp(min=0.0)
    scale = (hi - lo) / 255.0
    zp = torch.round(-lo / scale).clamp(0, 255)
    q = (torch.round(x.float() / scale) + zp).clamp(0, 255)
    return q.to(torch.uint8), scale, zp.to(torch.uint8)


@dynamic_quantize_linear.register_fake
def _(x):
    u8, f32 = torch.uint8, torch.float32
    return x.new_empty(x.shape, dtype=u8), x.new_empty((), dtype=f32), x.new_empty((), dtype=u8)


def _dq_onnx(x, scale, zero_point, axis: int, block_size: int):
    return op.DequantizeLinear(x, scale, zero_point, axis=axis, block_size=block_size)


def _q_onnx(x, scale, zero_point, axis: int, block_size: int):
    return op.QuantizeLinear(x, scale, zero_point, axis=axis, block_size=block_size)


def _dql_onnx(x):
    return op.DynamicQuantizeLinear(x)


TRANSLATIONS = {
    torch.ops.quantbalance.dequantize_linear.default: _dq_onnx,
    torch.ops.quantbalance.quantize_linear.default: _q_onnx,
    torch.ops.quantbalance.dynamic_quantize_linear.default: _dql_onnx,
}


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

    Signed symmetric 8/4-bit codes stay signed with zero point 0 (TensorRT's form); everything
    else becomes unsigned codes ``q - qmin`` with zero point ``zp - qmin`` (the same values).

    Args:
        qt: the quantized tensor.

    Returns:
        ``(codes, scale, zero_point, axis, block_size, is_4bit)`` or None if the scheme has no
        affine integer form (nf4, codebook, fp8, 1-bit).
    """
    s = qt.scheme
    if s.kind != "uniform" or s.bits == 1 or qt.scale is None:
        return None
    u = qt.codes().to(torch.int32)
    scale = qt.scale.float()
    if s.signed and s.symmetric and s.bits in (4, 8):
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


def _act(m: QuantModule, name: str) -> nn.Module:
    return nn.Identity() if m.input_quantizer is None else QDQAct(m.input_quantizer, name)


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


def export_module(qmodel: nn.Module) -> nn.Module:
    """A float32 copy of ``qmodel`` whose quantized modules emit real Q/DQ ops.

    Args:
        qmodel: a quantized model (``qb.quantize`` output).

    Returns:
        The export model (runs in torch too, matching the simulation).
    """
    from quantbalance.transform import replace_module

    model = copy.deepcopy(qmodel).float().eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, QLinear):
            replace_module(model, name, QDQLinear(m, name))
        elif isinstance(m, QEmbedding):
            replace_module(model, name, QDQEmbedding(m))
        elif isinstance(m, QuantModule):
            replace_module(model, name, QDQConv(m, name))
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


def to_onnx(
    qmodel: nn.Module, example_inputs: Any, *, opset: int = OPSET, dynamic: bool = True
) -> onnx.ModelProto:
    """Export ``qmodel`` to an in-memory, checked QDQ ONNX model.

    Args:
        qmodel: a quantized model.
        example_inputs: one batch (Tensor, tuple of positional inputs, or dict of named inputs).
        opset: ONNX opset (>= 21: blocked and 4-bit Q/DQ).
        dynamic: make the batch dimension (and the length of integer 2-D inputs) dynamic.

    Returns:
        The ONNX model.
    """
    if opset < 21:
        raise UnsupportedError(f"opset={opset}: blocked and int4 QDQ need opset >= 21")
    model = export_module(qmodel)
    pack4 = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, WeightDQ) and m.pack4
             for b in ("q", "zero_point")}  # fmt: skip
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        seq = isinstance(example_inputs, tuple | list)
        args, kwargs = (tuple(example_inputs) if seq else (example_inputs,)), {}
    shapes = None
    if dynamic:
        shapes = (
            {k: _dims(v) for k, v in kwargs.items()} if kwargs else tuple(_dims(a) for a in args)
        )
    prog = torch.onnx.export(
        model, args, kwargs=kwargs, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
        custom_translation_table=TRANSLATIONS, optimize=True, verbose=False,
    )  # fmt: skip
    proto = prog.model_proto
    _pack_int4(proto, pack4)
    _strip_metadata(proto)
    proto.ir_version = min(proto.ir_version, 10)
    plan = getattr(qmodel, "qb_plan", None)
    if plan is not None:
        helper.set_model_props(proto, {"quantbalance.plan": plan.to_json()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(
    qmodel: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int = OPSET,
    dynamic: bool = True,
) -> Path:
    """Write ``qmodel`` as a QDQ ONNX file (atomic; see the module docstring for the graph form).

    Args:
        qmodel: a quantized model (``qb.quantize`` output).
        example_inputs: one batch (Tensor, tuple, or dict such as tokenizer output).
        path: the ``.onnx`` file to write.
        opset: ONNX opset, >= 21.
        dynamic: dynamic batch dimension (and sequence length of integer 2-D inputs).

    Returns:
        The path written.

    Example:
        >>> export_onnx(qmodel, task.example_inputs, "model.onnx")  # doctest: +SKIP
    """
    proto = to_onnx(qmodel, example_inputs, opset=opset, dynamic=dynamic)
    blob = proto.SerializeToString()
    out = atomic_write(path, lambda p: p.write_bytes(blob))
    log.info("exported %s (%d bytes)", out, len(blob))
    return out


def _dims(x: Any) -> dict[int, Any] | None:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    auto = torch.export.Dim.AUTO
    if x.dim() == 2 and not x.is_floating_point():
        return {0: auto, 1: auto}
    return {0: auto}


def _pack_int4(proto: onnx.ModelProto, names: set[str]) -> None:
    """Turn the 4-bit code and zero-point initializers (uint8/int8, one per byte) into
    INT4/UINT4 tensors, two codes per byte (ONNX order: element 2i in the low nibble)."""
    inits = {t.name: t for t in proto.graph.initializer}
    missing = names - set(inits)
    if missing:
        raise UnsupportedError(f"exporter renamed 4-bit initializers: {sorted(missing)}")
    for name in names:
        t = inits[name]
        arr = numpy_helper.to_array(t)
        kind = TensorProto.INT4 if arr.dtype == np.int8 else TensorProto.UINT4
        flat = (arr.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        packed = flat[0::2] | (flat[1::2] << 4)
        t.CopyFrom(helper.make_tensor(name, kind, list(arr.shape), packed.tobytes(), raw=True))
    for vi in proto.graph.value_info:
        if vi.name in names:
            vi.type.tensor_type.elem_type = inits[vi.name].data_type


def _strip_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces and names (about 1 kB per node)."""
    graphs = [proto.graph]
    nodes = [n for g in graphs for n in g.node] + [n for f in proto.functions for n in f.node]
    for n in nodes:
        del n.metadata_props[:]
        n.doc_string = ""
    for vi in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        del vi.metadata_props[:]
    for t in proto.graph.initializer:
        del t.metadata_props[:]
