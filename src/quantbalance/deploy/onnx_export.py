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
SmoothQuant input factors   ``Mul`` by the per-channel factors before the activation's Q/DQ
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

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from quantbalance.args import checked
from quantbalance.deploy.onnx_registry import cached_torchlib_registry
from quantbalance.deploy.qdq_modules import WeightDQ, export_module
from quantbalance.deploy.qdq_ops import TRANSLATIONS
from quantbalance.errors import UnsupportedError
from quantbalance.io import atomic_write

log = logging.getLogger(__name__)

OPSET = 21
#: Models whose serialized graph would exceed this many bytes are written with external data
#: (protobuf cannot serialize a message of 2 GiB or more; the margin leaves room for the graph).
EXTERNAL_DATA_BYTES = 2**31 - 2**26


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
    pack4 = {f"{n}.q" for n, m in model.named_modules() if isinstance(m, WeightDQ) and m.pack4}
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
    try:
        with cached_torchlib_registry():
            prog = torch.onnx.export(
                model, args, kwargs=kwargs, dynamo=True, opset_version=opset,
                dynamic_shapes=shapes, custom_translation_table=TRANSLATIONS, optimize=True,
                verbose=False,
            )  # fmt: skip
    except Exception as e:
        raise UnsupportedError(_export_failure(qmodel, e)) from e
    proto = prog.model_proto
    _pack_int4(proto, pack4)
    _strip_metadata(proto)
    proto.ir_version = min(proto.ir_version, 10)
    plan = getattr(qmodel, "qb_plan", None)
    if plan is not None:
        helper.set_model_props(proto, {"quantbalance.plan": plan.to_json()})
    if proto.ByteSize() < EXTERNAL_DATA_BYTES:  # larger ones are checked from disk when saved
        onnx.checker.check_model(proto, full_check=True)
    return proto


@checked
def export_onnx(
    qmodel: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int = OPSET,
    dynamic: bool = True,
    external_data: bool | None = None,
) -> Path:
    """Write ``qmodel`` as a QDQ ONNX file (atomic; see the module docstring for the graph form).

    Models over :data:`EXTERNAL_DATA_BYTES` (or any, with ``external_data=True``) keep their
    initializers in ``<name>.data`` beside the graph (ONNX external data, one file, offsets
    relative to the graph's folder); ONNX Runtime loads both from the graph's path.

    Args:
        qmodel: a quantized model (``qb.quantize`` output).
        example_inputs: one batch (Tensor, tuple, or dict such as tokenizer output).
        path: the ``.onnx`` file to write.
        opset: ONNX opset, >= 21.
        dynamic: dynamic batch dimension (and sequence length of integer 2-D inputs).
        external_data: force (True) or forbid (False) external data; None: by size.

    Returns:
        The path written (the graph; ``<name>.data`` beside it with external data).

    Example:
        >>> export_onnx(qmodel, task.example_inputs, "model.onnx")  # doctest: +SKIP
    """
    if example_inputs is None or isinstance(example_inputs, bool | int | float | str | bytes):
        raise UnsupportedError(
            f"export_onnx: example_inputs={example_inputs!r:.40}; give one batch of inputs "
            "(a Tensor, a tuple of inputs or a dict of named inputs)"
        )
    proto = to_onnx(qmodel, example_inputs, opset=opset, dynamic=dynamic)
    if external_data if external_data is not None else proto.ByteSize() >= EXTERNAL_DATA_BYTES:
        return save_external(proto, path)
    blob = proto.SerializeToString()
    out = atomic_write(path, lambda p: p.write_bytes(blob))
    log.info("exported %s (%d bytes)", out, len(blob))
    return out


def save_external(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Save ``proto`` as ``path`` + ``<name>.data`` (external data), checked from disk, atomically.

    Both files are written in a temporary folder beside ``path`` and renamed into place, the
    data file first, so a reader never sees a graph without its data.

    Args:
        proto: the model (its initializers are moved to external data in place).
        path: the ``.onnx`` file.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = f"{path.name}.data"
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save_model(
            proto, str(tmp / path.name), save_as_external_data=True,
            all_tensors_to_one_file=True, location=data, size_threshold=1024,
        )  # fmt: skip
        onnx.checker.check_model(str(tmp / path.name), full_check=True)
        if (tmp / data).exists():  # absent when every initializer is under 1 kB
            os.replace(tmp / data, path.parent / data)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s with external data %s", path, data)
    return path


def _export_failure(qmodel: nn.Module, e: Exception) -> str:
    """Say which layer (when torch's message names one) and why ``torch.onnx.export`` failed."""
    text = str(e)
    names = [n for n, _ in qmodel.named_modules() if n]
    named = [n for n in names if f"'{n}'" in text or f"L__self___{n.replace('.', '_')}" in text]
    where = f" at layer {named[-1]!r}" if named else ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (
        f"{type(qmodel).__name__} could not be exported to ONNX{where} "
        f"({type(e).__name__}: {lines[0][:300] if lines else ''}); check example_inputs fit the "
        "model, and that every layer is supported (see export_module)"
    )


def _dims(x: Any) -> dict[int, Any] | None:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    auto = torch.export.Dim.AUTO
    if x.dim() == 2 and not x.is_floating_point():
        return {0: auto, 1: auto}
    return {0: auto}


def _pack_int4(proto: onnx.ModelProto, codes: set[str]) -> None:
    """Turn the 4-bit code initializers and the zero points of their ``DequantizeLinear`` nodes
    (uint8/int8, one per byte) into INT4/UINT4 tensors, two per byte (ONNX order: element 2i
    in the low nibble).

    The exporter may merge identical zero-point constants across layers; a zero point shared
    with an 8-bit ``DequantizeLinear`` is copied first, so only the 4-bit uses change type.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    missing = codes - set(inits)
    if missing:
        raise UnsupportedError(f"exporter renamed 4-bit initializers: {sorted(missing)}")
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    zps: set[str] = set()
    for node in dq:
        if node.input[0] in codes and len(node.input) > 2 and node.input[2]:
            zps.add(node.input[2])
    wide = {n.input[2] for n in dq if n.input[0] not in codes and len(n.input) > 2}
    for zp in zps & wide:
        copy_name = f"{zp}.int4"
        t = onnx.TensorProto()
        t.CopyFrom(inits[zp])
        t.name = copy_name
        proto.graph.initializer.append(t)
        inits[copy_name] = proto.graph.initializer[-1]
        for node in dq:
            if node.input[0] in codes and node.input[2] == zp:
                node.input[2] = copy_name
        zps = (zps - {zp}) | {copy_name}
    names = codes | zps
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
