"""Run a quantized model on PyTorch's integer CPU kernels, the rest in float, under torch.compile.

:func:`to_torch_engine` turns the simulated QuantModules of ``qb.quantize`` into modules that
really compute in int8 / int4, chosen from the one kernel table (``quantbalance.deploy.kernels``):
oneDNN ``qlinear_pointwise`` / ``qconv2d_pointwise`` for layers with int8 inputs,
``_weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu`` for weight-only layers, the
dequantized weight for the rest. A kernel whose integer maths would differ from the simulation on
this CPU (full-range int8 weights on x86 without VNNI) is passed over, loudly, or refused.

Activation quantization reproduces ``fake_quantize`` exactly (divide by the scale, round half to
even, clamp), so outputs match the simulation up to the rounding of the engine's float dtype.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import types
from typing import Any, Literal

import torch
from torch import nn

from quantbalance.deploy.kernels import LayerDesc, choose, engine_dtype
from quantbalance.deploy.torch_modules import Dequant, Int4Linear, Int8Conv2d, Int8Linear
from quantbalance.errors import UnsupportedError
from quantbalance.hardware import Hardware, detect
from quantbalance.nn import QuantAdd, QuantModule
from quantbalance.transform import fold_batchnorm, replace_module

log = logging.getLogger(__name__)

__all__ = [
    "Dequant",
    "Int4Linear",
    "Int8Conv2d",
    "Int8Linear",
    "compile_isolated",
    "to_torch_engine",
]


def to_torch_engine(
    qmodel: nn.Module,
    compile: bool = True,
    dtype: torch.dtype | None = None,
    fused_attention: bool = True,
    inexact: Literal["fallback", "error"] = "fallback",
    hardware: Hardware | None = None,
) -> nn.Module:
    """A copy of ``qmodel`` that computes with real integer kernels; the rest in ``dtype``.

    Args:
        qmodel: output of ``qb.quantize``.
        compile: wrap with ``torch.compile`` (fuses activation quantization into producers).
        dtype: dtype of the non-quantized parts and of the int8 kernels' outputs. None: bf16
            where this CPU has native bf16 (AVX512-BF16, AMX, Arm bf16), else float32 (emulated
            bf16 is several times slower than float32).
        fused_attention: switch Hugging Face models that use the explicit ("eager") attention
            to PyTorch's fused ``scaled_dot_product_attention`` (same math, one kernel).
        inexact: what to do with a layer whose int8 kernel would compute something else on
            this CPU: ``fallback`` (run its exact dequantized form, with a warning) or
            ``error`` (raise :class:`UnsupportedError` saying why and how to fix it).
        hardware: the machine to build for (default: this one, ``hardware.detect()``).

    Returns:
        The engine module (call it like the model); ``qb_engine_kernels`` counts the kernels
        and ``qb_engine_fallbacks`` maps each passed-over layer to the reason.
    """
    hw = hardware or detect()
    dt = dtype or engine_dtype(hw)
    model = copy.deepcopy(qmodel).eval()
    # BatchNorm after a float convolution folded into it, as ORT does and as qb.quantize did
    # before quantizing: a float engine is then a fair baseline (fashion's ran 2x slower).
    fold_batchnorm(model)
    if fused_attention:
        _use_sdpa(model)
    kinds: dict[str, int] = {}
    fallbacks: dict[str, str] = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, QuantModule):
            continue
        kernel, reasons = choose(LayerDesc.of_module(mod), hw)
        if reasons:
            fallbacks[name] = "; ".join(reasons)
            if inexact == "error":
                raise UnsupportedError(f"layer {name!r}: {fallbacks[name]}")
        replace_module(model, name, kernel.build(mod, dt))
        kinds[kernel.name] = kinds.get(kernel.name, 0) + 1
    for mod in model.modules():
        if isinstance(mod, QuantModule):  # quantized in place, inside a Dequant wrapper
            continue
        if isinstance(mod, QuantAdd):  # quantize and add in float32, as simulated
            mod.register_forward_pre_hook(functools.partial(_cast_inputs, dtype=torch.float32))
        if isinstance(mod, nn.Embedding):
            mod.to(dt)
        elif isinstance(mod, nn.LayerNorm | nn.BatchNorm2d | nn.Linear | nn.Conv2d):
            mod.to(dt)  # float layers left in the model: their inputs follow (model inputs too)
            mod.register_forward_pre_hook(functools.partial(_cast_inputs, dtype=dt))
    if fallbacks:
        first = next(iter(fallbacks.items()))
        log.warning(
            "torch engine: %d layer(s) run their exact dequantized form instead of a faster "
            "kernel (first: %s: %s)", len(fallbacks), *first,
        )  # fmt: skip
    log.info("torch engine kernels (%s): %s", dt, kinds)
    model.qb_engine_kernels = kinds
    model.qb_engine_fallbacks = fallbacks
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
    separate_inductor_cache()
    return torch.compile(_Isolated(model), dynamic=False)


def separate_inductor_cache() -> str | None:
    """Give processes run with ``ATEN_CPU_CAPABILITY`` an inductor code cache of their own.

    torch 2.13's inductor does not key its on-disk cache on ``ATEN_CPU_CAPABILITY``: a process
    held to ``avx2`` on an AVX-512 CPU reuses kernels compiled by a native process (and the
    reverse), and computes wrong values (measured: NaN outputs, max abs error 0.99 on a small
    MLP) or crashes. A fresh cache gives the right values. So when the variable is set and the
    cache folder is inductor's default, the folder becomes ``<default>-<capability>``.

    Returns:
        The cache folder set, or None when nothing changed.
    """
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if not cap or cap == "default":
        return None
    # deferred: torch._inductor is slow to import
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) != default:
        return None  # the user's own folder
    folder = f"{default}-{cap}"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    log.info(
        "ATEN_CPU_CAPABILITY=%s: inductor cache in %s (not shared with native runs)", cap, folder
    )
    return folder


def _cast_inputs(module: nn.Module, args: tuple[Any, ...], dtype: torch.dtype) -> tuple[Any, ...]:
    return tuple(
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    )


def _use_sdpa(model: nn.Module) -> None:
    """Point every Hugging Face config in ``model`` from eager attention to SDPA, if supported."""
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if getattr(cfg, "_attn_implementation", None) != "eager":
            continue
        if getattr(mod, "_supports_sdpa", False):
            cfg._attn_implementation = "sdpa"
            log.info("torch engine: %s uses fused SDPA attention", type(mod).__name__)
