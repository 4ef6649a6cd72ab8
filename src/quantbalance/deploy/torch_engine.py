"""Run a quantized model on PyTorch's integer CPU kernels, the rest in bf16, under torch.compile.

:func:`to_torch_engine` turns the simulated QuantModules of ``qb.quantize`` into modules that
really compute in int8 / int4:

==============================================  ==============================================
layer                                           kernel
==============================================  ==============================================
int8 per-channel symmetric W, static int8 A      oneDNN ``qlinear_pointwise`` (u8 × s8)
int8 per-channel symmetric W, dynamic per-token  oneDNN int8 GEMM + per-row rescale/zero-point
                                                 correction (fused by torch.compile)
int4 W in groups (K divisible by the group)      ``_weight_int4pack_mm_for_cpu`` (bf16 × int4)
anything else (and convolutions, embeddings)     the dequantized weight in bf16
==============================================  ==============================================

Activation quantization reproduces ``fake_quantize`` exactly (divide by the scale, round half to
even, clamp), so outputs match the simulation up to the bf16 rounding of everything else.
SmoothQuant's per-channel input factors (``QuantModule.input_smooth``) are one multiply in the
same fused quantization kernel.
"""

from __future__ import annotations

import copy
import logging
import types
from typing import Any

import torch
from torch import nn

from quantbalance.deploy.torch_kernels import int8_linear, onednn_available
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, QuantizedTensor
from quantbalance.nn import ActQuantizer, KeepsForward, QEmbedding, QLinear, QuantModule
from quantbalance.transform import replace_module

log = logging.getLogger(__name__)


def _int8_codes(qw: QuantizedTensor) -> torch.Tensor:
    return (qw.codes().to(torch.int16) + qw.scheme.qmin).to(torch.int8)


def _is_int8_pc(qw: QuantizedTensor) -> bool:
    s = qw.scheme
    return (
        s.kind == "uniform" and s.bits == 8 and s.symmetric and s.signed
        and isinstance(s.granularity, PerChannel) and s.granularity.axis == 0
        and len(qw.shape) == 2
    )  # fmt: skip


class Int8Linear(nn.Module):
    """int8 × int8 linear on oneDNN with static or dynamic (per-token) activation ranges.

    Args:
        q: the simulated QLinear (int8 per-channel symmetric weights, 8-bit activations).
        out_dtype: dtype of the output (bf16 keeps the rest of the network in bf16).
    """

    def __init__(self, q: QLinear, out_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        act = q.input_quantizer
        assert act is not None
        codes = _int8_codes(q.qweight)
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
        self.symmetric = s.symmetric
        if self.dynamic:
            # Σ_k W[n,k]·w_scale[n]: the per-row zero-point correction.
            colsum = codes.float().sum(1) * self.w_scale
            self.register_buffer("w_colsum", colsum)
        else:
            zp = 0 if s.symmetric else int(act.zero_point)
            # uint8 domain for oneDNN: shift signed codes by 128.
            self.shift = 0 if not s.signed else 128
            self.x_scale = float(act.scale)
            self.x_zp = zp + self.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize the input, run the int8 GEMM, return ``out_dtype``."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        if self.smooth is not None:
            x2 = x2 * self.smooth
        if not self.dynamic:
            q = torch.clamp(torch.round(x2 / self.x_scale) + self.x_zp, 0, 255).to(torch.uint8)
            y = int8_linear(
                q, self.x_scale, self.x_zp, self.packed, self.w_scale, self.w_zp, self.bias,
                self.out_dtype,
            )  # fmt: skip
            return y.reshape(*shape[:-1], self.out_features)
        lo = torch.clamp(x2.amin(1, keepdim=True), max=0.0)
        hi = torch.clamp(x2.amax(1, keepdim=True), min=0.0)
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


class Int4Linear(nn.Module):
    """bf16 activations × int4 grouped weights (``_weight_int4pack_mm_for_cpu``).

    Args:
        q: a weight-only QLinear with 4-bit uniform weights in groups along the input axis.
    """

    def __init__(self, q: QLinear) -> None:
        super().__init__()
        qw = q.qweight
        s = qw.scheme
        assert isinstance(s.granularity, PerGroup)
        g = s.granularity.size
        n, k = qw.shape
        u = qw.codes().to(torch.int32)  # (N, K) in [0, 15]
        self.group = g
        self.out_features = n
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)
        self.register_buffer("packed", packed)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ dequant(W)ᵀ + b`` in bf16."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.smooth is not None:
            x2 = x2.float() * self.smooth
        x2 = x2.to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.packed, self.group, self.scale_zeros
        )
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def _int4_ok(q: QLinear) -> bool:
    s = q.qweight.scheme
    g = s.granularity
    return (
        q.input_quantizer is None and s.kind == "uniform" and s.bits == 4
        and isinstance(g, PerGroup) and g.axis in (-1, 1) and len(q.qweight.shape) == 2
        and q.qweight.shape[1] % g.size == 0 and g.size in (32, 64, 128, 256)
    )  # fmt: skip


class _Bf16Dequant(nn.Module):
    """Fallback: the quantized module's own forward with its dequantized weight in bf16."""

    def __init__(self, q: QuantModule) -> None:
        super().__init__()
        self.q = q
        q._w = q.weight.to(torch.bfloat16)
        if q.input_quantizer is not None and q.input_quantizer.mode == "static":
            q.input_quantizer.scale = q.input_quantizer.scale.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the simulated module in bf16."""
        x = x.to(torch.bfloat16) if x.is_floating_point() else x
        return self.q(x)


class _Simulated(nn.Module):
    """A layer quantized in place (its own forward): run exactly as simulated, in float32."""

    def __init__(self, q: KeepsForward) -> None:
        super().__init__()
        self.q = q
        q.weight  # noqa: B018 (fill the dequantized cache now, not inside a compiled graph)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The simulated layer on a float32 input; the output in the input's dtype."""
        y = self.q(x.float() if x.is_floating_point() else x, *args, **kwargs)
        return y.to(x.dtype) if x.is_floating_point() and isinstance(y, torch.Tensor) else y


def to_torch_engine(
    qmodel: nn.Module,
    compile: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    fused_attention: bool = True,
) -> nn.Module:
    """A copy of ``qmodel`` that computes with real integer kernels; the rest in ``dtype``.

    Args:
        qmodel: output of ``qb.quantize``.
        compile: wrap with ``torch.compile`` (fuses activation quantization into producers).
        dtype: dtype of the non-quantized parts (bf16 uses the AMX units where present).
        fused_attention: switch Hugging Face models that use the explicit ("eager") attention
            to PyTorch's fused ``scaled_dot_product_attention`` (same math, one kernel).

    Returns:
        The engine module (call it like the model).
    """
    model = copy.deepcopy(qmodel).eval()
    if fused_attention:
        _use_sdpa(model)
    kinds: dict[str, int] = {}
    use_onednn = onednn_available()
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, QuantModule):
            continue
        act = mod.input_quantizer
        new: nn.Module
        if (
            use_onednn and isinstance(mod, QLinear) and _is_int8_pc(mod.qweight)
            and isinstance(act, ActQuantizer) and act.scheme.bits == 8
            and isinstance(act.scheme.granularity, PerTensor | PerToken)
        ):  # fmt: skip
            new, kind = Int8Linear(mod, out_dtype=dtype), "int8-onednn"
        elif isinstance(mod, QLinear) and _int4_ok(mod):
            new, kind = Int4Linear(mod), "int4-pack"
        elif isinstance(mod, QEmbedding):
            new, kind = _embedding(mod, dtype), "embedding-bf16"
        elif isinstance(mod, KeepsForward):
            new, kind = _Simulated(mod), "simulated-fp32"
        else:
            new, kind = _Bf16Dequant(mod), "dequant-bf16"
        replace_module(model, name, new)
        kinds[kind] = kinds.get(kind, 0) + 1
    for mod in model.modules():
        float_layer = isinstance(mod, nn.LayerNorm | nn.Embedding | nn.BatchNorm2d | nn.Linear)
        if float_layer and not isinstance(mod, QuantModule):  # in-place quantized: simulated
            mod.to(dtype)
    log.info("torch engine kernels: %s", kinds)
    model.qb_engine_kernels = kinds
    return compile_isolated(model) if compile else model


class _Isolated(nn.Module):
    """Calls the wrapped module; each instance gets its own copy of ``forward``'s code object."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.training = module.training
        code = _Isolated._forward.__code__.replace(co_name=f"qb_engine_{id(self):x}")
        self.forward = types.MethodType(types.FunctionType(code, globals(), code.co_name), self)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def compile_isolated(model: nn.Module) -> nn.Module:
    """``torch.compile(model, dynamic=False)`` with a compile cache of its own.

    Dynamo keys its cache on the code object of the compiled frame, so two models of one class
    share it: every call then checks the guards of the other's graphs too, and whichever was
    compiled first pays for them (measured: up to ~20 % slower at batch 1 when a process holds
    several compiled variants of one model, as benchmarks do). A per-instance code object keeps
    the caches apart.

    Args:
        model: the module to compile.

    Returns:
        The compiled module (attribute access falls through to ``model``).
    """
    return torch.compile(_Isolated(model), dynamic=False)


def _embedding(q: QEmbedding, dtype: torch.dtype) -> nn.Module:
    emb = nn.Embedding(q.num_embeddings, q.embedding_dim, q.padding_idx)
    emb.weight = nn.Parameter(q.weight.to(dtype), requires_grad=False)
    return emb


def _use_sdpa(model: nn.Module) -> None:
    """Point every Hugging Face config in ``model`` from eager attention to SDPA, if supported."""
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if getattr(cfg, "_attn_implementation", None) != "eager":
            continue
        if getattr(mod, "_supports_sdpa", False):
            cfg._attn_implementation = "sdpa"
            log.info("torch engine: %s uses fused SDPA attention", type(mod).__name__)
