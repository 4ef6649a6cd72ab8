"""The engines a benchmark compares: small named factories from a task to a ``Runner``.

=================  ===============================================================================
engine             what runs
=================  ===============================================================================
``float``          the float model, torch eager
``bf16``           a bf16 copy, torch eager
``bf16-compile``   the bf16 copy under ``torch.compile``
``torchao``        torchao ``Int8DynamicActivationInt8WeightConfig`` (nn.Linear only) + compile
``ort-float``      the float model exported to ONNX, ONNX Runtime defaults
``ort-dynamic``    ONNX Runtime ``quantize_dynamic`` (per-channel int8 weights) of that file
``ort-static``     ONNX Runtime ``quantize_static`` QDQ of the weight-bearing ops (Conv, MatMul,
                   Gemm with a constant weight; Gather of a constant table): per-channel int8
                   weights, uint8 activations, MinMax-calibrated on the calibration batches
``qb-torch``       each quantbalance preset on its torch engine (``to_torch_engine``)
``qb-ort``         each preset exported as QDQ (``export_onnx``) in :class:`OrtSession`
=================  ===============================================================================

Both ORT quantizers get the float graph after ORT's ``quant_pre_process``, as ORT advises, and
``reduce_range=True`` (7-bit weights) on CPUs whose int8 kernels saturate (x86 without VNNI,
``Hardware.ort_int8_saturates``), the setting ORT documents for them: otherwise their rows would
time a model that computes something else.
``ort-static`` is limited to weight-bearing ops (what quantbalance's ``w8a8`` quantizes) because
ORT's default op set also quantizes the attention-mask ``Add`` of BERT-style models, whose
``finfo.min`` entries wipe out the other values in that tensor (minilm cosine 0.35 against 0.94).

File bytes are bytes on disk: safetensors for torch rows (``torch.save`` for torchao, whose
tensor subclasses safetensors cannot hold), the ``.onnx`` file for ONNX Runtime rows.

>>> sorted(ENGINES)[:3]
['bf16', 'bf16-compile', 'float']
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from quantbalance.bench.result import BF16_ROW
from quantbalance.calibration.batch import call_model, cast_batch
from quantbalance.deploy.checkpoint import save
from quantbalance.deploy.torch_engine import compile_isolated, to_torch_engine
from quantbalance.errors import UnsupportedError
from quantbalance.evaluate.task import Task
from quantbalance.hardware import detect
from quantbalance.quantize import quantize


@dataclass
class Runner:
    """A built engine.

    Attributes:
        run: ``run(batch) -> output`` (batch as in ``calibration.batch.call_model``).
        nbytes: bytes of the deployed file.
        note: what the engine really quantized or ran (shown in the table).
    """

    run: Callable[[Any], Any]
    nbytes: int
    note: str = ""


@dataclass
class BenchContext:
    """What engine factories share: the task, a scratch folder and cached artifacts."""

    task: Task
    workdir: Path
    threads: int
    _cache: dict[str, Any] = field(default_factory=dict)

    def quantized(self, preset: str) -> nn.Module:
        """``qb.quantize(task.model, preset, task.calib_data)``, once per preset.

        ``preset`` may name algorithm steps after a ``+`` (``w8a8+smoothquant``).
        """
        if preset not in self._cache:
            name, _, algorithm = preset.partition("+")
            self._cache[preset] = quantize(
                self.task.model, name, self.task.calib_data, algorithm=algorithm or None,
                progress=False,
            )  # fmt: skip
        return self._cache[preset]

    def float_onnx(self, preprocessed: bool = False) -> Path:
        """The float model exported to ONNX (dynamic batch), once.

        Args:
            preprocessed: after ONNX Runtime's ``quant_pre_process`` (shape inference and graph
                optimization), the input its quantizers recommend.

        Returns:
            The ``.onnx`` path.
        """
        key = "float_pre.onnx" if preprocessed else "float.onnx"
        if key not in self._cache:
            path = self.workdir / key
            if preprocessed:
                # deferred: onnxruntime is slow to import
                from onnxruntime.quantization.shape_inference import quant_pre_process

                quant_pre_process(str(self.float_onnx()), str(path), skip_symbolic_shape=True)
            else:
                _export_float(self.task.model, self.task.example_inputs, path)
            self._cache[key] = path
        return self._cache[key]


@dataclass(frozen=True)
class Engine:
    """A named engine factory.

    Attributes:
        label: the row name; ``{preset}`` is filled in for per-preset engines.
        build: ``build(context, preset) -> Runner`` (``preset`` is None unless ``per_preset``).
        per_preset: one row per quantbalance preset.
    """

    label: str
    build: Callable[[BenchContext, str | None], Runner]
    per_preset: bool = False


def _torch_runner(model: nn.Module, dtype: torch.dtype | None = None) -> Callable[[Any], Any]:
    def run(batch: Any) -> Any:
        return call_model(model, batch if dtype is None else cast_batch(batch, dtype))

    return run


def _float(ctx: BenchContext, _: str | None) -> Runner:
    path = _save_safetensors(ctx.task.model, ctx.workdir / "float.safetensors")
    return Runner(_torch_runner(ctx.task.model), path.stat().st_size)


def _bf16(ctx: BenchContext, _: str | None, compile: bool = False) -> Runner:
    model = copy.deepcopy(ctx.task.model).to(torch.bfloat16)
    path = _save_safetensors(model, ctx.workdir / "bf16.safetensors")
    if compile:
        model = compile_isolated(model)
    return Runner(_torch_runner(model, torch.bfloat16), path.stat().st_size)


def _torchao(ctx: BenchContext, _: str | None) -> Runner:
    try:
        # deferred: torchao is an optional extra
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise UnsupportedError(
            f"torchao is not importable ({exc}); install it with: pip install 'quantbalance[bench]'"
        ) from exc
    model = copy.deepcopy(ctx.task.model)  # float32 base: faster than bf16 here on CPU
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    n_q = sum(
        1
        for m in model.modules()
        if isinstance(m, nn.Linear) and type(m.weight) not in (torch.Tensor, nn.Parameter)
    )
    n_layers = sum(1 for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d))
    path = ctx.workdir / "torchao.pt"
    torch.save(model.state_dict(), path)
    compiled = compile_isolated(model)
    note = f"torchao {torchao.__version__}: int8 Linear×{n_q} of {n_layers} Linear/Conv layers"
    return Runner(_torch_runner(compiled), path.stat().st_size, note)


def _ort_float(ctx: BenchContext, _: str | None) -> Runner:
    return _ort_runner(ctx, ctx.float_onnx())


def _ort_dynamic(ctx: BenchContext, _: str | None) -> Runner:
    # deferred: onnxruntime is slow to import
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = ctx.workdir / "ort_dynamic.onnx"
    quantize_dynamic(
        ctx.float_onnx(preprocessed=True), out, per_channel=True, weight_type=QuantType.QInt8,
        reduce_range=_reduce_range(),
    )  # fmt: skip
    return _ort_runner(ctx, out)


def _reduce_range() -> bool:
    """7-bit weights for ORT's quantizers where its int8 kernels saturate (no VNNI)."""
    return detect().ort_int8_saturates


def _ort_static(ctx: BenchContext, _: str | None) -> Runner:
    # deferred: onnx and onnxruntime are slow to import
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = ctx.float_onnx(preprocessed=True)
    names = _onnx_input_names(src)
    weighted = _weight_nodes(onnx.load(str(src)))
    feeds = [_feeds(b, names) for b in ctx.task.calib_data]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    out = ctx.workdir / "ort_static.onnx"
    quantize_static(
        src,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        nodes_to_quantize=weighted,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=_reduce_range(),
    )
    return _ort_runner(ctx, out)


def _qb_torch(ctx: BenchContext, preset: str | None) -> Runner:
    assert preset is not None
    q = ctx.quantized(preset)
    path = save(q, ctx.workdir / f"{preset}.safetensors")
    engine = to_torch_engine(q)
    inner = getattr(engine, "_orig_mod", engine)
    kinds = getattr(inner, "qb_engine_kernels", {})
    note = ", ".join(f"{k}×{v}" for k, v in kinds.items())
    if fallbacks := getattr(inner, "qb_engine_fallbacks", {}):
        note += f"; {len(fallbacks)} layer(s) dequantized: int8 would saturate here"
    return Runner(_torch_runner(engine), path.stat().st_size, note)


def _qb_ort(ctx: BenchContext, preset: str | None) -> Runner:
    # deferred: deploy.onnx_export imports onnx: only when timed
    from quantbalance.deploy.onnx_export import export_onnx

    assert preset is not None
    path = export_onnx(
        ctx.quantized(preset), ctx.task.example_inputs, ctx.workdir / f"{preset}.onnx"
    )
    return _ort_runner(ctx, path, qb_session=True)


ENGINES: dict[str, Engine] = {
    "float": Engine("float torch", _float),
    "bf16": Engine(BF16_ROW, _bf16),
    "bf16-compile": Engine("torch bf16 + compile", lambda c, p: _bf16(c, p, compile=True)),
    "torchao": Engine("torchao int8×int8 + compile", _torchao),
    "ort-float": Engine("ORT float", _ort_float),
    "ort-dynamic": Engine("ORT quantize_dynamic", _ort_dynamic),
    "ort-static": Engine("ORT quantize_static QDQ", _ort_static),
    "qb-torch": Engine("qb {preset} torch", _qb_torch, per_preset=True),
    "qb-ort": Engine("qb {preset} ORT", _qb_ort, per_preset=True),
}


def _save_safetensors(model: nn.Module, path: Path) -> Path:
    save_model(model, str(path))
    return path


def _export_float(model: nn.Module, batch: Any, path: Path) -> Path:
    """Export the float model with the TorchScript exporter (what ORT's quantizers expect)."""
    if isinstance(batch, Mapping):
        args, kwargs, names = (), dict(batch), list(batch)
    else:
        args = tuple(batch) if isinstance(batch, tuple | list) else (batch,)
        kwargs, names = {}, [f"input{i}" if i else "input" for i in range(len(args))]
    values = list(kwargs.values()) or list(args)
    axes = {
        n: {0: "batch", **({1: "length"} if v.dim() == 2 and not v.is_floating_point() else {})}
        for n, v in zip(names, values, strict=True)
    }
    torch.onnx.export(
        model,
        args,
        str(path),
        kwargs=kwargs,
        input_names=names,
        output_names=["output"],
        dynamic_axes=axes,
        dynamo=False,
        opset_version=17,
    )
    return path


def _onnx_input_names(path: Path) -> list[str]:
    import onnx  # deferred: onnx is slow to import

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def _feeds(batch: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        return {k: v.numpy() for k, v in batch.items() if k in names}
    values = batch if isinstance(batch, tuple | list) else (batch,)
    return {n: v.numpy() for n, v in zip(names, values, strict=False)}


def _weight_nodes(proto: Any) -> list[str]:
    """Nodes that hold a constant weight: Conv/MatMul/Gemm with one, Gather from a table."""
    inits = {i.name for i in proto.graph.initializer}
    weighted = {"Conv", "MatMul", "Gemm"}
    return [
        n.name
        for n in proto.graph.node
        if (n.op_type in weighted and any(i in inits for i in n.input))
        or (n.op_type == "Gather" and n.input[:1] and n.input[0] in inits)
    ]


def _ort_runner(ctx: BenchContext, path: Path, qb_session: bool = False) -> Runner:
    """ORT peers run with ONNX Runtime's default optimizers; qb files with OrtSession's.

    No spinning threads: engines are timed interleaved on the same cores.
    """
    # deferred: onnx and (through deploy.ort) onnxruntime are slow to import
    import onnx

    from quantbalance.deploy.ort import OrtSession

    options = {} if qb_session else {"disabled_optimizers": ()}
    sess = OrtSession(path, intra_op_threads=ctx.threads, spin=False, **options)
    note = _quantized_ops(onnx.load(str(path)))
    if sess.saturating:
        note = f"Q/DQ run as float ops: {len(sess.saturating)} int8 layer(s) would saturate here"
    elif _reduce_range() and not qb_session and "quantized ops" in note:
        note += " (reduce_range: 7-bit weights, no VNNI here)"
    return Runner(sess, path.stat().st_size, note)


def _quantized_ops(proto: Any) -> str:
    """Which ops of a graph compute in integers or read dequantized weights (for the note)."""
    nodes = proto.graph.node
    dq_out = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    ops = Counter(
        n.op_type
        for n in nodes
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
        and (
            "Integer" in n.op_type
            or n.op_type.startswith("QLinear")
            or any(i in dq_out for i in n.input)
        )
    )
    return (
        ("quantized ops: " + ", ".join(f"{k}×{v}" for k, v in sorted(ops.items())))
        if ops
        else "no quantized ops"
    )
