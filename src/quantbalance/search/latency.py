"""The default latency model: time, on this machine, the module the torch engine would build.

For each layer and spec the model quantizes the layer as ``qb.quantize`` would on this machine
(the spec lowered for ``hardware.detect().int8_target``; round-to-nearest weights; a static
input range from the timing input), asks the one kernel table (``deploy.kernels.choose``) which
kernel the torch engine runs it on, builds that very module (``Kernel.build``) in the engine's
default dtype, and times it on an input of the layer's shape. A float layer is timed as the float
op in that dtype. So the search times what ``to_torch_engine`` runs, and a layer that the engine
would not run on an integer kernel here (e.g. full-range int8 on a CPU without VNNI) is timed as
the fallback it gets.

Layers with the same shape and kernel are timed once; all kernels are timed in interleaved
rounds and the median is kept, which keeps ratios honest on a shared machine.

The engine runs the whole network under ``torch.compile``, and the model of cost follows it
(``compile="auto"``, the default):

* a layer that quantizes its input (int8 activations: the oneDNN kernels, or the dequantized
  form of a layer with quantized inputs) runs several ops around its kernel (scale, round,
  clamp, cast) that the compiler fuses: its module is timed compiled. Timed eager, such layers
  were predicted 2.2-3.4x slower than deployed (minilm, batch 32);
* weight-only kernels and float layers are one kernel call: timed eager (the compiler runs the
  same kernel; compiling them would only cost compilations);
* the time outside the quantizable layers (attention, norms, activations, residual adds) comes
  from the whole float model *compiled* as the engine runs it, minus its float layers. Taken
  eager, it held every elementwise op that the engine fuses (ReLU, residual adds, norms in the
  engine dtype), and every plan of a small CNN was over-predicted by that difference (fashion,
  batch 64: w8a8 predicted 1.8-2.9x its deployed time).

Where the layers timed alone do not add up to the engine (small layers), each spec is calibrated
against a whole-engine run of its uniform plan (``search.latency_calibration``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from quantbalance.calibration.batch import cast_batch
from quantbalance.deploy import torch_engine  # its functions looked up when called
from quantbalance.deploy.kernels import Kernel, LayerDesc, choose, engine_dtype
from quantbalance.errors import ConfigError
from quantbalance.formats import quantize_tensor
from quantbalance.formats.kinds import qparams_from_range
from quantbalance.hardware import Hardware, detect
from quantbalance.lowering import lower_spec, plan_target
from quantbalance.nn import REGISTRY, ActQuantizer, engine_layer, weight_matrix
from quantbalance.plan import LayerSpec
from quantbalance.progress import steps
from quantbalance.search.costs import LatencyModel, time_model
from quantbalance.search.latency_calibration import METHOD, ROUND_S, time_uniform_engines

log = logging.getLogger(__name__)


def _lowered(module: nn.Module, spec: LayerSpec | None, hw: Hardware) -> LayerSpec | None:
    """The spec as ``qb.quantize`` lowers it for the Plans' target (``lowering.plan_target``)."""
    return lower_spec(spec, type(module).__name__, plan_target())


def kernel_for(
    module: nn.Module, spec: LayerSpec | None, hw: Hardware | None = None
) -> Kernel | None:
    """The kernel-table entry the torch engine would run this layer on here (None: float).

    Args:
        module: the float layer.
        spec: the spec or None.
        hw: the machine (default: this one).

    Returns:
        The kernel, or None for a float layer.
    """
    hw = hw or detect()
    spec = _lowered(module, spec, hw)
    if spec is None or spec.weight is None:
        return None
    return choose(LayerDesc.of_spec(module, spec), hw)[0]


def kernel_kind(module: nn.Module, spec: LayerSpec | None) -> str:
    """Which kernel times this layer: ``float`` or a kernel-table name (``int8-onednn`` gets
    ``-dynamic`` / ``-token`` for dynamic per-tensor / per-token input ranges).

    Args:
        module: the float layer.
        spec: the spec or None.

    Returns:
        The kernel's name.
    """
    k = kernel_for(module, spec)
    if k is None:
        return "float"
    if k.name == "int8-onednn" and spec is not None and spec.act_mode == "dynamic":
        token = spec.activation is not None and type(spec.activation.granularity).__name__
        return "int8-onednn-token" if token == "PerToken" else "int8-onednn-dynamic"
    return k.name


def _input(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    if isinstance(module, nn.Embedding):
        return torch.randint(0, module.num_embeddings, shape)
    return torch.randn(*shape)


def _quant_module(module: nn.Module, spec: LayerSpec, x: torch.Tensor) -> nn.Module:
    """``module`` quantized with ``spec`` (RTN weights, static range taken from ``x``)."""
    assert spec.weight is not None
    qweight = quantize_tensor(weight_matrix(module).float(), spec.weight)
    act = None
    if spec.activation is not None and not isinstance(module, nn.Embedding):
        scale = zp = None
        if spec.act_mode == "static":
            lo, hi = torch.aminmax(x.float())
            scale, zp = qparams_from_range(lo, hi, spec.activation)
        act = ActQuantizer.frozen(spec.activation, spec.act_mode, scale=scale, zero_point=zp)
    return REGISTRY[type(module)].from_float(module, qweight, act).eval()


def build_kernel(
    module: nn.Module,
    spec: LayerSpec | None,
    shape: tuple[int, ...],
    hw: Hardware | None = None,
    compile: bool = False,
) -> Callable[[], Any]:
    """A zero-argument callable running the engine's module for this layer once.

    Args:
        module: the float layer.
        spec: the spec or None.
        shape: the layer's input shape.
        hw: the machine (default: this one).
        compile: run the module under ``torch.compile`` as the engine does (fuses the
            activation quantization; costs a compilation per kernel).

    Returns:
        The callable.
    """
    hw = hw or detect()
    dtype = engine_dtype(hw)
    spec = _lowered(module, spec, hw)
    x = _input(module, shape)
    plain = engine_layer(module)  # Conv1D: its Linear; None: a layer with its own forward
    if spec is None or spec.weight is None or plain is None:  # float, or run simulated (dequant)
        mod = copy.deepcopy(module).to(dtype).eval()
    else:
        q = _quant_module(plain, spec, x)
        mod = choose(LayerDesc.of_module(q), hw)[0].build(q, dtype)
    x = x.to(dtype) if x.is_floating_point() else x
    if compile:
        mod = torch_engine.compile_isolated(mod)
    return lambda: mod(x)


def fuses_input(module: nn.Module, spec: LayerSpec | None, hw: Hardware | None = None) -> bool:
    """Whether the engine's module for this layer quantizes its input (ops the compiler fuses).

    Args:
        module: the float layer.
        spec: the spec or None.
        hw: the machine (default: this one).

    Returns:
        True for layers with quantized activations (not embeddings, whose inputs are indices).
    """
    spec = _lowered(module, spec, hw or detect())
    return (
        spec is not None and spec.weight is not None and spec.activation is not None
        and not isinstance(module, nn.Embedding)
    )  # fmt: skip


def _signature(module: nn.Module, spec: LayerSpec | None, shape: Sequence[int]) -> str:
    conv = ""
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        conv = f"{module.stride}{module.padding}{module.dilation}{module.groups}"
    bias = getattr(module, "bias", None) is not None
    kind = kernel_kind(module, spec)
    lowered = _lowered(module, spec, detect())
    label = lowered.label if lowered is not None and kind != "float" else ""
    return (
        f"{type(module).__name__}{tuple(module.weight.shape)}{conv}{bias}|{kind}|{label}|"
        f"{tuple(shape)}"
    )


def _env_mode(var: str) -> bool | Literal["auto"]:
    """``$var`` as ``"auto"`` (default, unset), True (``1``) or False (``0``)."""
    v = os.environ.get(var, "auto").strip().lower()
    modes: dict[str, bool | Literal["auto"]] = {"auto": "auto", "1": True, "0": False}
    if v not in modes:
        raise ConfigError(f"{var}={v!r}; accepted: auto, 1, 0")
    return modes[v]


def default_compile() -> bool | Literal["auto"]:
    """``TorchLatencyModel``'s default ``compile``: ``$QB_LATENCY_COMPILE``, else ``"auto"``.

    ``QB_LATENCY_COMPILE=0`` times everything eager: no compilation (seconds saved per search on
    small models, e.g. in unit tests), but int8-activation layers are then over-predicted.

    Returns:
        ``"auto"``, True or False.

    Raises:
        ConfigError: the variable holds anything else.
    """
    return _env_mode("QB_LATENCY_COMPILE")


def default_calibrate() -> bool | Literal["auto"]:
    """``TorchLatencyModel``'s default ``calibrate``: ``$QB_LATENCY_CALIBRATE``, else ``"auto"``.

    Returns:
        ``"auto"``, True or False.

    Raises:
        ConfigError: the variable holds anything else.
    """
    return _env_mode("QB_LATENCY_CALIBRATE")


def _warm(fn: Callable[[], Any], warmup: int) -> tuple[Callable[[], Any], float]:
    """Run ``fn`` ``warmup`` times (compiling it), then once timed: ``(fn, seconds)``."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    return fn, max(time.perf_counter() - t0, 1e-7)


class TorchLatencyModel(LatencyModel):
    """Measures each layer's deployed-form kernel in torch on this machine (see module doc).

    Args:
        repeats: timed rounds (median kept).
        warmup: untimed calls per kernel before timing.
        min_sample_s: each sample loops a kernel until it lasts at least this long.
        compile: how layers and the rest of the model are timed: ``"auto"`` (default) as the
            compiled engine runs them: layers that quantize their input compiled (one
            compilation per distinct kernel), other layers eager, the rest of the model from
            the compiled float engine (see the module doc); ``True``: every layer compiled too;
            ``False``: all eager (no compilation; over-predicts int8-activation layers and the
            elementwise ops that the engine fuses). None: ``$QB_LATENCY_COMPILE`` (``auto``,
            ``1`` or ``0``), else ``"auto"``.
        calibrate: scale the standalone timings by whole-engine runs of uniform plans
            (``search.latency_calibration``): ``"auto"`` (default) where the float layers
            timed alone exceed the whole compiled float model, never when ``compile=False``;
            True: always; False: never. None: ``$QB_LATENCY_CALIBRATE``, else ``"auto"``.
    """

    def __init__(
        self,
        repeats: int = 7,
        warmup: int = 2,
        min_sample_s: float = 0.002,
        compile: bool | Literal["auto"] | None = None,
        calibrate: bool | Literal["auto"] | None = None,
    ) -> None:
        compile = default_compile() if compile is None else compile
        calibrate = default_calibrate() if calibrate is None else calibrate
        for arg, v in (("compile", compile), ("calibrate", calibrate)):
            if v not in (True, False, "auto"):
                raise ConfigError(f"{arg}={v!r}; accepted: 'auto', True, False")
        self.calibrate = False if compile is False and calibrate == "auto" else calibrate
        hw = detect()
        # Timings depend on the kernels chosen here: caches keyed on the name stay apart.
        dt = str(engine_dtype(hw)).removeprefix("torch.")
        mode = {True: "/compiled", False: "/eager", "auto": "/fused"}[compile]
        cal = "" if self.calibrate is False else f"/cal-{METHOD}"  # old timings not reused
        self.name = f"torch-cpu/{hw.int8_target}/{dt}{mode}{cal}"  # the plan target: in the sig
        self.compile = compile
        self.repeats = repeats
        self.warmup = warmup
        self.min_sample_s = min_sample_s
        self._memo: dict[str, float] = {}

    def signature(self, module: nn.Module, spec: LayerSpec | None, shape: Sequence[int]) -> str:
        """Key under which equal layers share one timing (type, shapes, kernel kind)."""
        return _signature(module, spec, shape)

    def model_latency_ms(self, model: nn.Module, example_inputs: Any) -> float:
        """The float model as the torch engine runs it (engine dtype, SDPA; compiled unless
        ``compile=False``).

        Args:
            model: the float model.
            example_inputs: one batch.

        Returns:
            Median milliseconds of one forward pass (at least ``repeats`` runs; a small model
            gets ``ROUND_S`` seconds of runs, up to ``50 * repeats``).
        """
        dtype = engine_dtype(detect())
        engine = torch_engine.to_torch_engine(model, compile=False).to(dtype)
        batch = cast_batch(example_inputs, dtype)

        def timed(fn: nn.Module) -> float:  # small models: ROUND_S of runs, spikes are outliers
            one = time_model(fn, batch, repeats=1)
            runs = min(50 * self.repeats, math.ceil(ROUND_S * 1e3 / max(one, 1e-3)))
            return time_model(fn, batch, repeats=max(self.repeats, runs))

        with torch.inference_mode():
            if self.compile is not False:
                try:
                    return timed(torch_engine.compile_isolated(engine))
                except Exception as e:  # torch.compile fails with many exception types
                    log.warning("latency: the float model did not compile (%s); timed eager", e)
            return timed(engine)

    def engines_latency_ms(
        self, model: nn.Module, plans: dict[str, dict[str, LayerSpec]], example_inputs: Any
    ) -> dict[str, float]:
        """Whole compiled engines of uniform plans and the float model, timed interleaved.

        Args:
            model: the float model (BatchNorm folded).
            plans: plan id -> layer -> spec.
            example_inputs: one batch.

        Returns:
            plan id -> median ms, and ``"float"``.
        """
        return time_uniform_engines(model, plans, example_inputs, self.repeats)

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
        for sig, (m, s, sh) in steps(list(todo.items()), "latency: build layer kernels"):
            comp = self.compile is True or (self.compile == "auto" and fuses_input(m, s))
            try:
                fn, one = _warm(build_kernel(m, s, tuple(sh), compile=comp), self.warmup)
            except Exception as e:  # torch.compile fails with many exception types
                if not comp:
                    raise
                log.warning("latency: %s did not compile (%s); timed eager", sig, e)
                fn, one = _warm(build_kernel(m, s, tuple(sh)), self.warmup)
            fns[sig], loops[sig] = fn, max(1, math.ceil(self.min_sample_s / one))
        samples: dict[str, list[float]] = {sig: [] for sig in fns}
        for _ in steps(range(self.repeats), f"latency: time {len(fns)} kernels"):
            for sig, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(loops[sig]):
                    fn()
                samples[sig].append((time.perf_counter() - t0) * 1e3 / loops[sig])
        return {sig: statistics.median(v) for sig, v in samples.items()}
