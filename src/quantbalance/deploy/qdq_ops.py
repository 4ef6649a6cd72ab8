"""The custom ops the QDQ exporter emits, with their exact ONNX translations.

Each op is a ``torch.library.custom_op`` that computes the ONNX operator's semantics in torch
(so the export module runs and matches the simulation) and is translated by the
``torch.export``-based exporter into exactly one ONNX node (:data:`TRANSLATIONS`).
"""

from __future__ import annotations

import torch
from onnxscript import opset21 as op


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
