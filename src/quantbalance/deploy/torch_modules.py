"""The fast modules the torch engine builds from QuantModules (chosen by ``deploy.kernels``).

Each is built from a QuantModule's public surface (``qweight``, ``bias``, ``input_quantizer``,
``input_smooth``). Activation quantization reproduces ``fake_quantize`` exactly (divide by the
scale, round half to even, clamp); SmoothQuant's factors are one multiply before it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from quantbalance.deploy.torch_kernels import int8_conv2d, int8_linear
from quantbalance.formats import PerGroup, QuantizedTensor
from quantbalance.nn import QConv2d, QEmbedding, QLinear, QuantModule


def int8_codes(qw: QuantizedTensor) -> torch.Tensor:
    """Signed integer codes of a symmetric signed uniform weight (bits <= 8) as int8.

    Args:
        qw: the quantized weight.

    Returns:
        int8 tensor in the weight's stored shape.
    """
    return (qw.codes().to(torch.int16) + qw.scheme.qmin).to(torch.int8)


def _static_input(q: QuantModule) -> tuple[float, int]:
    """Scale and uint8-domain zero point of a static 8-bit input quantizer."""
    act = q.input_quantizer
    assert act is not None and act.mode == "static"
    s = act.scheme
    zp = 0 if s.symmetric else int(act.zero_point)
    return float(act.scale), zp - s.qmin  # signed codes shift by 128 into uint8


def _quantize_u8(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale) + zp, 0, 255).to(torch.uint8)


class Int8Linear(nn.Module):
    """uint8 × int8 linear on oneDNN with static or dynamic (per-tensor or per-token) ranges.

    Args:
        q: a QLinear with signed symmetric per-channel weights (bits <= 8) and 8-bit inputs.
        out_dtype: dtype of the output (the engine's dtype for the rest of the network).
    """

    def __init__(self, q: QLinear, out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        act = q.input_quantizer
        assert act is not None
        codes = int8_codes(q.qweight)
        self.out_dtype = out_dtype
        self.out_features, self.in_features = codes.shape
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(codes, None))
        self.register_buffer("w_scale", q.qweight.scale.float().reshape(-1).contiguous())
        self.register_buffer("w_zp", torch.zeros(self.out_features, dtype=torch.int64))
        bias = q.bias.detach().float() if q.bias is not None else None
        self.register_buffer("bias", bias)
        self.register_buffer("smooth", q.input_smooth)
        self.dynamic = act.mode == "dynamic"
        s = act.scheme
        self.qmin, self.qmax = s.qmin, s.qmax
        self.per_token = self.dynamic and type(s.granularity).__name__ == "PerToken"
        if self.dynamic:
            # Σ_k W[n,k]·w_scale[n]: the per-row zero-point correction.
            self.register_buffer("w_colsum", codes.float().sum(1) * self.w_scale)
        else:
            self.x_scale, self.x_zp = _static_input(q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize the input, run the int8 GEMM, return ``out_dtype``."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        if self.smooth is not None:
            x2 = x2 * self.smooth
        if not self.dynamic:
            q = _quantize_u8(x2, self.x_scale, self.x_zp)
            y = int8_linear(
                q, self.x_scale, self.x_zp, self.packed, self.w_scale, self.w_zp, self.bias,
                self.out_dtype,
            )  # fmt: skip
            return y.reshape(*shape[:-1], self.out_features)
        dim = 1 if self.per_token else None
        lo = torch.clamp(x2.amin(dim, keepdim=True), max=0.0)
        hi = torch.clamp(x2.amax(dim, keepdim=True), min=0.0)
        scale = torch.clamp(
            (hi - lo) / (self.qmax - self.qmin), min=torch.finfo(torch.float32).tiny
        )
        zp = torch.clamp(torch.round(self.qmin - lo / scale), self.qmin, self.qmax)
        q = torch.clamp(torch.round(x2 / scale) + zp, self.qmin, self.qmax) - self.qmin
        acc = int8_linear(
            q.to(torch.uint8), 1.0, 0, self.packed, self.w_scale, self.w_zp, None, torch.float32
        )
        y = scale * (acc - (zp - self.qmin) * self.w_colsum)
        if self.bias is not None:
            y = y + self.bias
        return y.to(self.out_dtype).reshape(*shape[:-1], self.out_features)


class Int8Conv2d(nn.Module):
    """uint8 × int8 2-D convolution on oneDNN (``qconv2d_pointwise``), static input range.

    Args:
        q: a QConv2d with signed symmetric per-channel weights (bits <= 8), static 8-bit input.
        out_dtype: dtype of the output.
    """

    def __init__(self, q: QConv2d, out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        codes = int8_codes(q.qweight).reshape(q.weight_shape())
        self.out_dtype = out_dtype
        self.x_scale, self.x_zp = _static_input(q)
        self.args = (list(q.stride), list(q.padding), list(q.dilation), q.groups)
        w_scale = q.qweight.scale.float().reshape(-1).contiguous()
        packed = torch.ops.onednn.qconv_prepack(codes, w_scale, self.x_scale, self.x_zp, *self.args)
        self.register_buffer("packed", packed)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_zp", torch.zeros(codes.shape[0], dtype=torch.int64))
        self.register_buffer("bias", q.bias.detach().float() if q.bias is not None else None)
        self.register_buffer("smooth", q.input_smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize the input (channels-last uint8), convolve, return ``out_dtype``."""
        x = x.float()
        if self.smooth is not None:
            x = x * self.smooth.reshape(1, -1, 1, 1)
        q = _quantize_u8(x, self.x_scale, self.x_zp).contiguous(memory_format=torch.channels_last)
        return int8_conv2d(
            q, self.x_scale, self.x_zp, self.packed, self.w_scale, self.w_zp, self.bias,
            *self.args, self.out_dtype,
        )  # fmt: skip


class _WeightOnlyLinear(nn.Module):
    """Shared ``forward`` of the weight-only linears: flatten, smooth, ``matmul``, bias, reshape.

    Subclasses set ``dtype``, ``out_features`` and the ``bias``/``smooth`` buffers, and define
    ``matmul`` on the flattened ``(M, K)`` input.
    """

    dtype: torch.dtype
    out_features: int
    bias: torch.Tensor | None
    smooth: torch.Tensor | None

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ Wᵀ`` for a flattened ``(M, K)`` input."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ Wᵀ + b``, returned in ``dtype``."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.smooth is not None:
            x2 = x2.float() * self.smooth
        y = self.matmul(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.to(self.dtype).reshape(*shape[:-1], self.out_features)


class Int8WeightLinear(_WeightOnlyLinear):
    """Float activations × int8 per-channel weights (``aten._weight_int8pack_mm``).

    Args:
        q: a weight-only QLinear with signed symmetric 8-bit per-channel weights.
        dtype: activation and output dtype.
    """

    def __init__(self, q: QLinear, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.out_features = q.qweight.shape[0]
        self.register_buffer("codes", int8_codes(q.qweight).contiguous())
        self.register_buffer("scale", q.qweight.scale.reshape(-1).to(dtype).contiguous())
        self.register_buffer("bias", q.bias.detach().to(dtype) if q.bias is not None else None)
        self.register_buffer("smooth", q.input_smooth)

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ (codes·scale)ᵀ`` in ``dtype``."""
        return torch.ops.aten._weight_int8pack_mm(
            x2.to(self.dtype).contiguous(), self.codes, self.scale
        )


class Int4Linear(_WeightOnlyLinear):
    """Float activations × int4 grouped weights (``_weight_int4pack_mm_for_cpu``, bf16).

    Args:
        q: a weight-only QLinear with 4-bit uniform weights in groups along the input axis.
        dtype: output dtype (the kernel itself computes in bf16).
    """

    def __init__(self, q: QLinear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        qw = q.qweight
        s = qw.scheme
        assert isinstance(s.granularity, PerGroup)
        g = s.granularity.size
        n, k = qw.shape
        u = qw.codes().to(torch.int32)  # (N, K) in [0, 15]
        self.group, self.out_features, self.dtype = g, n, dtype
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1))
        scale = qw.scale.float().reshape(n, k // g)
        zp_u = (
            torch.full_like(scale, -s.qmin)
            if qw.zero_point is None
            else qw.zero_point.float().reshape(n, k // g) - s.qmin
        )
        # kernel: w = (u - 8)·scale + zero  ->  zero = (8 - zp_u)·scale
        sz = torch.stack([scale, (8 - zp_u) * scale], dim=-1).transpose(0, 1)
        self.register_buffer("scale_zeros", sz.contiguous().to(torch.bfloat16))
        bias = q.bias.detach().to(torch.bfloat16) if q.bias is not None else None
        self.register_buffer("bias", bias)
        self.register_buffer("smooth", q.input_smooth)

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ dequant(W)ᵀ`` in bf16 (the kernel's own dtype)."""
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2.to(torch.bfloat16), self.packed, self.group, self.scale_zeros
        )


class Dequant(nn.Module):
    """The quantized module's own forward with its dequantized weight in ``dtype`` (exact)."""

    def __init__(self, q: QuantModule, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.q = q
        self.dtype = dtype
        q._w = q.weight.to(dtype)  # the cached dequantized weight, in the engine's dtype
        if q.input_quantizer is not None and q.input_quantizer.mode == "static":
            q.input_quantizer.scale = q.input_quantizer.scale.float()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Run the simulated module in ``dtype`` (extra arguments go to its own forward)."""
        x = x.to(self.dtype) if x.is_floating_point() else x
        return self.q(x, *args, **kwargs)


def embedding(q: QEmbedding, dtype: torch.dtype) -> nn.Module:
    """A float ``nn.Embedding`` holding the dequantized table in ``dtype``.

    Args:
        q: the quantized embedding.
        dtype: table dtype.

    Returns:
        The embedding module.
    """
    emb = nn.Embedding(q.num_embeddings, q.embedding_dim, q.padding_idx)
    emb.weight = nn.Parameter(q.weight.to(dtype), requires_grad=False)
    return emb


def float_op(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A float module's copy in ``dtype`` (what the engine runs for layers left float).

    Args:
        module: a float Linear / Conv / Embedding.
        dtype: its dtype in the engine.

    Returns:
        The module in ``dtype``.
    """
    return copy.deepcopy(module).to(dtype)
