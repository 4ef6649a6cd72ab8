"""PyTorch's own integer CPU kernels, wrapped as opaque custom ops.

``onednn::qlinear_pointwise`` (oneDNN; AMX/VNNI int8 units) runs uint8 activations × int8
weights. Wrapping it in a ``torch.library.custom_op`` lets ``torch.compile`` treat it as an
external kernel and fuse the activation quantization (divide, round, clamp, cast) into the op
that produces the activation, instead of paying a separate pass over memory.

``onednn::qconv2d_pointwise`` is the same for 2-D convolutions (channels-last uint8 input).
``aten::_weight_int4pack_mm_for_cpu`` runs bf16 activations × int4 weights in groups.
"""

from __future__ import annotations

import torch


def onednn_available() -> bool:
    """Whether oneDNN's int8 linear kernels exist in this torch build.

    Returns:
        True when ``torch.ops.onednn.qlinear_pointwise`` and mkldnn are available.
    """
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


@torch.library.custom_op("quantbalance::int8_linear", mutates_args=())
def int8_linear(
    qx: torch.Tensor, x_scale: float, x_zero_point: int,  # the uint8 input
    packed_w: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor,  # the int8 weight
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """``(qx - x_zp)·x_scale @ (W·w_scale)ᵀ + bias`` on oneDNN's int8 kernels.

    Args:
        qx: uint8 activations ``(M, K)``.
        x_scale: activation scale.
        x_zero_point: activation zero point (uint8 domain).
        packed_w: int8 weight from ``torch.ops.onednn.qlinear_prepack``.
        w_scale: float32 per-output-channel scales ``(N,)``.
        w_zero_point: int64 zeros ``(N,)``.
        bias: float32 ``(N,)`` or None.
        out_dtype: float32 or bfloat16.

    Returns:
        ``(M, N)`` tensor of ``out_dtype``.
    """
    return torch.ops.onednn.qlinear_pointwise(
        qx, x_scale, x_zero_point, packed_w, w_scale, w_zero_point, bias,
        1.0, 0, out_dtype, "none", [], "",
    )  # fmt: skip


@int8_linear.register_fake
def _int8_linear_fake(  # type: ignore[no-untyped-def]
    qx, x_scale, x_zero_point, packed_w, w_scale, w_zero_point, bias, out_dtype
):
    return qx.new_empty((qx.shape[0], w_scale.shape[0]), dtype=out_dtype)


@torch.library.custom_op("quantbalance::int8_conv2d", mutates_args=())
def int8_conv2d(
    qx: torch.Tensor, x_scale: float, x_zero_point: int,  # the uint8 input
    packed_w: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor,  # the int8 weight
    bias: torch.Tensor | None,
    stride: list[int], padding: list[int], dilation: list[int], groups: int,  # the convolution
    out_dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """``conv2d((qx - x_zp)·x_scale, W·w_scale) + bias`` on oneDNN's int8 kernels.

    Args:
        qx: uint8 activations ``(N, C, H, W)``, channels-last.
        x_scale: activation scale.
        x_zero_point: activation zero point (uint8 domain).
        packed_w: weight from ``torch.ops.onednn.qconv_prepack``.
        w_scale: float32 per-output-channel scales.
        w_zero_point: int64 zeros.
        bias: float32 or None.
        stride: convolution stride.
        padding: convolution padding.
        dilation: convolution dilation.
        groups: convolution groups.
        out_dtype: float32 or bfloat16.

    Returns:
        The output of ``out_dtype``.
    """
    return torch.ops.onednn.qconv2d_pointwise(
        qx, x_scale, x_zero_point, packed_w, w_scale, w_zero_point, bias, stride, padding,
        dilation, groups, 1.0, 0, out_dtype, "none", [], None,
    )  # fmt: skip


@int8_conv2d.register_fake
def _int8_conv2d_fake(  # type: ignore[no-untyped-def]
    qx, x_scale, x_zero_point, packed_w, w_scale, w_zero_point, bias, stride, padding, dilation,
    groups, out_dtype,
):  # fmt: skip
    n, _, h, w = qx.shape
    k = packed_w.shape[-2:] if packed_w.dim() == 4 else (1, 1)
    hw = [
        (size + 2 * p - d * (kk - 1) - 1) // s + 1
        for size, p, d, kk, s in zip((h, w), padding, dilation, k, stride, strict=True)
    ]
    out = qx.new_empty((n, w_scale.shape[0], *hw), dtype=out_dtype)
    return out.contiguous(memory_format=torch.channels_last)
