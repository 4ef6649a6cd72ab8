"""The default latency model: time each layer's deployed-form kernel in torch on this machine.

=========================================  ================================================
spec                                       timed kernel (input captured from example_inputs)
=========================================  ================================================
float (None)                               ``F.linear`` / ``F.conv*d`` / ``F.embedding`` fp32
Linear, int weights + int8 activations     quantize input to uint8 + ``onednn.qlinear_pointwise``
  (dynamic per-tensor: + a min/max pass)   (per token: int8 input + ``torch._int_mm`` + rescale)
Conv2d, int weights + int8 activations     quantize input to uint8 + ``onednn.qconv2d_pointwise``
Linear, int8 weight-only                   ``aten._weight_int8pack_mm`` (bf16 in, fp32 out)
Linear, int4 groups 32..256 weight-only    ``aten._weight_int4pack_mm_for_cpu`` (bf16)
any other weight-only layer                the float op (weights dequantized at load)
=========================================  ================================================

Layers with the same shape and kernel are timed once; all kernels are
timed in interleaved rounds and the median is kept, which keeps ratios honest on a shared
machine.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantbalance.formats import PerGroup, PerToken
from quantbalance.nn import engine_layer
from quantbalance.plan import LayerSpec

log = logging.getLogger(__name__)


def kernel_kind(module: nn.Module, spec: LayerSpec | None) -> str:
    """Which kernel family ``TorchLatencyModel`` times for this layer and spec.

    Args:
        module: the float layer.
        spec: the spec or None.

    Returns:
        One of ``float``, ``int8-act`` (static input ranges), ``int8-act-dynamic`` (per-tensor
        range computed per call), ``int8-act-token``, ``int8-weight``, ``int4-weight``,
        ``dequant-float``.
    """
    plain = engine_layer(module)
    if spec is None or spec.weight is None or plain is None:
        return "float"  # (None: a layer with its own forward runs simulated, in float)
    module, w = plain, spec.weight
    if isinstance(module, nn.Embedding | nn.Conv1d):
        return "dequant-float"
    if spec.activation is not None and w.kind == "uniform":
        if spec.act_mode == "static":
            return "int8-act"
        if isinstance(spec.activation.granularity, PerToken) and isinstance(module, nn.Linear):
            return "int8-act-token"
        return "int8-act-dynamic"
    if isinstance(module, nn.Conv2d):
        return "dequant-float"
    if w.kind == "uniform" and w.bits == 8 and module.in_features % 16 == 0:
        return "int8-weight"  # (_weight_int8pack_mm crashes when K is not a multiple of 16)
    g = w.granularity
    if (
        w.kind == "uniform"
        and w.bits == 4
        and isinstance(g, PerGroup)
        and g.size in (32, 64, 128, 256)
        and module.in_features % g.size == 0
        and module.out_features % 16 == 0
    ):
        return "int4-weight"
    return "dequant-float"


def _linear_kernel(
    mod: nn.Linear, kind: str, shape: tuple[int, ...], spec: LayerSpec | None
) -> Callable[[], Any]:
    K, N = mod.in_features, mod.out_features
    M = max(1, math.prod(shape[:-1]))
    x = torch.randn(M, K)
    w = mod.weight.detach().float()
    b = None if mod.bias is None else mod.bias.detach().float()
    if kind in ("float", "dequant-float"):
        return lambda: F.linear(x, w, b)
    scale = (w.abs().amax(1) / 127).clamp(min=1e-8)
    wq = (w / scale[:, None]).round().clamp(-128, 127).to(torch.int8)
    if kind == "int8-weight":
        sb = scale.bfloat16()
        return lambda: _add(torch.ops.aten._weight_int8pack_mm(x.bfloat16(), wq, sb).float(), b)
    if kind == "int4-weight":
        assert spec is not None and spec.weight is not None
        assert isinstance(spec.weight.granularity, PerGroup)
        g = spec.weight.granularity.size
        blocks = w.reshape(N, K // g, g)
        lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        s = ((hi - lo) / 15).clamp(min=1e-8)
        q = ((blocks - lo) / s).round().clamp(0, 15).to(torch.int32).reshape(N, K)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.stack([s.reshape(N, -1).t(), (lo + 8 * s).reshape(N, -1).t()], -1)
        sz = sz.contiguous().bfloat16()
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        return lambda: _add(mm(x.bfloat16(), packed, g, sz).float(), b)
    if kind == "int8-act-token":  # per-token scales: no oneDNN kernel takes them; _int_mm does
        wt = wq.t().contiguous()

        def per_token() -> torch.Tensor:
            s = (x.abs().amax(1, keepdim=True) / 127).clamp(min=1e-8)
            xq = torch.round(x / s).clamp(-128, 127).to(torch.int8)
            return _add(torch._int_mm(xq, wt).float() * s * scale, b)

        return per_token
    # int8-act(-dynamic): per-tensor asymmetric uint8 input (what oneDNN takes), fp32 output
    packed = torch.ops.onednn.qlinear_prepack(wq, [M, K])
    wz = torch.zeros(N, dtype=torch.int64)
    op = torch.ops.onednn.qlinear_pointwise
    static = _input_range(x)

    def run() -> torch.Tensor:
        xs, xz = static if kind == "int8-act" else _input_range(x)
        xq = torch.clamp(torch.round(x * (1 / xs)) + xz, 0, 255).to(torch.uint8)
        return op(xq, xs, xz, packed, scale, wz, b, 1.0, 0, torch.float32, "none", [], "")

    return run


def _input_range(x: torch.Tensor) -> tuple[float, int]:
    lo, hi = torch.aminmax(x)
    lo_f, hi_f = min(float(lo), 0.0), max(float(hi), 0.0)
    xs = max(hi_f - lo_f, 1e-8) / 255
    return xs, round(-lo_f / xs)


def _add(y: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return y if b is None else y + b


def _conv_kernel(
    mod: nn.Module, kind: str, shape: tuple[int, ...], spec: LayerSpec | None
) -> Callable[[], Any]:
    assert isinstance(mod, nn.Conv1d | nn.Conv2d)
    x = torch.randn(*shape)
    w = mod.weight.detach().float()
    b = None if mod.bias is None else mod.bias.detach().float()
    fn = F.conv2d if isinstance(mod, nn.Conv2d) else F.conv1d
    args = (mod.stride, mod.padding, mod.dilation, mod.groups)
    if not kind.startswith("int8-act") or isinstance(mod.padding, str):
        return lambda: fn(x, w, b, *args)
    n_out = w.shape[0]
    scale = (w.reshape(n_out, -1).abs().amax(1) / 127).clamp(min=1e-8)
    wq = (w / scale.reshape(-1, 1, 1, 1)).round().clamp(-128, 127).to(torch.int8)
    xs, xz = _input_range(x)
    st, pad, dil = list(mod.stride), list(mod.padding), list(mod.dilation)
    packed = torch.ops.onednn.qconv_prepack(
        wq, scale, xs, xz, st, pad, dil, mod.groups, list(shape)
    )
    wz = torch.zeros(n_out, dtype=torch.int64)
    op = torch.ops.onednn.qconv2d_pointwise

    def run() -> torch.Tensor:
        if kind == "int8-act-dynamic":  # the per-call range pass (the packed scale is kept)
            _input_range(x)
        xq = torch.clamp(torch.round(x * (1 / xs)) + xz, 0, 255).to(torch.uint8)
        xq = xq.contiguous(memory_format=torch.channels_last)
        return op(
            xq,
            xs,
            xz,
            packed,
            scale,
            wz,
            b,
            st,
            pad,
            dil,
            mod.groups,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            None,
        )

    return run


def build_kernel(module: nn.Module, spec: LayerSpec | None, shape: tuple[int, ...]) -> Callable:
    """A zero-argument callable running ``module``'s deployed-form kernel once.

    Falls back to the float op when a specialised kernel rejects the shape.

    Args:
        module: the float layer.
        spec: the spec or None.
        shape: the layer's input shape.

    Returns:
        The callable.
    """
    kind = kernel_kind(module, spec)
    plain = engine_layer(module)
    if plain is None:  # its own forward, as the engine runs it (simulated, float)
        x = torch.randn(shape) if not isinstance(module, nn.Embedding) else torch.zeros(shape)
        return lambda: module(x.long() if isinstance(module, nn.Embedding) else x)
    module = plain
    if isinstance(module, nn.Embedding):
        idx = torch.randint(0, module.num_embeddings, shape)
        w = module.weight.detach().float()
        return lambda: F.embedding(idx, w)
    make = _linear_kernel if isinstance(module, nn.Linear) else _conv_kernel
    try:
        fn = make(module, kind, shape, spec)  # type: ignore[arg-type]
        fn()
        return fn
    except (RuntimeError, ValueError, AssertionError) as e:
        log.info("kernel %s rejected %s %s (%s); timing the float op", kind, module, shape, e)
        return make(module, "float", shape, None)  # type: ignore[arg-type]


def _signature(module: nn.Module, spec: LayerSpec | None, shape: Sequence[int]) -> str:
    conv = ""
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        conv = f"{module.stride}{module.padding}{module.dilation}{module.groups}"
    bias = getattr(module, "bias", None) is not None
    kind = kernel_kind(module, spec).replace("dequant-float", "float")  # the same kernel
    if kind == "int4-weight" and spec is not None and spec.weight is not None:
        kind += spec.weight.label
    return f"{type(module).__name__}{tuple(module.weight.shape)}{conv}{bias}|{kind}|{tuple(shape)}"


class TorchLatencyModel:
    """Measures each layer's deployed-form kernel in torch on this machine (see module doc).

    Args:
        repeats: timed rounds (median kept).
        warmup: untimed calls per kernel before timing.
        min_sample_s: each sample loops a kernel until it lasts at least this long.
    """

    name = "torch-cpu"

    def __init__(self, repeats: int = 7, warmup: int = 2, min_sample_s: float = 0.002) -> None:
        self.repeats = repeats
        self.warmup = warmup
        self.min_sample_s = min_sample_s
        self._memo: dict[str, float] = {}

    def signature(self, module: nn.Module, spec: LayerSpec | None, shape: Sequence[int]) -> str:
        """Key under which equal layers share one timing (type, shapes, kernel kind)."""
        return _signature(module, spec, shape)

    def latency_ms(
        self,
        layer_name: str,
        module: nn.Module,
        spec: LayerSpec | None,
        example_input_shape: tuple[int, ...],
    ) -> float:
        """Median milliseconds of the layer's kernel (see :class:`LatencyModel`)."""
        return self.latency_many([(layer_name, module, spec, example_input_shape)])[0]

    def latency_many(
        self, items: Sequence[tuple[str, nn.Module, LayerSpec | None, tuple[int, ...]]]
    ) -> list[float]:
        """Time many layers in interleaved rounds; equal signatures are timed once.

        Args:
            items: ``(layer_name, module, spec, input_shape)`` tuples.

        Returns:
            Milliseconds per item.
        """
        sigs = [_signature(m, s, sh) for _, m, s, sh in items]
        todo = {}
        for sig, (_, m, s, sh) in zip(sigs, items, strict=True):
            if sig not in self._memo and sig not in todo:
                todo[sig] = (m, s, sh)
        if todo:
            self._memo.update(self._measure(todo))
        return [self._memo[s] for s in sigs]

    @torch.inference_mode()
    def _measure(self, todo: dict[str, tuple[nn.Module, Any, Any]]) -> dict[str, float]:
        fns, loops = {}, {}
        for sig, (m, s, sh) in todo.items():
            fn = build_kernel(m, s, tuple(sh))
            for _ in range(self.warmup):
                fn()
            t0 = time.perf_counter()
            fn()
            one = max(time.perf_counter() - t0, 1e-7)
            fns[sig], loops[sig] = fn, max(1, math.ceil(self.min_sample_s / one))
        samples: dict[str, list[float]] = {sig: [] for sig in fns}
        for _ in range(self.repeats):
            for sig, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(loops[sig]):
                    fn()
                samples[sig].append((time.perf_counter() - t0) * 1e3 / loops[sig])
        return {sig: statistics.median(v) for sig, v in samples.items()}
