"""ONNX in: an ONNX graph becomes a torch module (``onnx2torch``) that quantbalance quantizes,
searches and exports back to ONNX QDQ like any other model.

``Conv`` becomes ``nn.Conv1d/2d/3d`` and ``Gemm`` with constant weights ``nn.Linear``, so
those layers are quantized. Exporters often write a linear layer as ``MatMul`` + ``Add`` (Keras,
PyTorch's dynamo exporter) with casts between: the graph is first simplified with
``onnxscript``'s optimizer (constant folding, redundant casts) and its ``MatMul + Add -> Gemm``
rewrite, which keeps the float outputs (tested to 1e-5). A ``MatMul`` by a constant that stays a
``MatMul`` is not a weight layer torch can quantize: it is counted in a warning, never silent.
Ops without a converter are refused before conversion with an
:class:`~quantbalance.errors.UnsupportedOpError` naming them. ONNX files are parsed with
``onnx`` (no pickle); external data must sit beside the file.

``onnx2torch`` imports ``torchvision`` for its ``NonMaxSuppression`` and ``RoiAlign``
converters only. Where torchvision is not installed (its PyPI wheels need a CUDA build of
torch), onnx2torch is imported with a stand-in for that one import and those two ops are refused
by name; every other converter is the library's own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from quantbalance.errors import AssetMissingError, ModelLoadError, UnsupportedOpError

log = logging.getLogger(__name__)

#: The highest default-domain opset onnx2torch reads; newer graphs are converted down first.
MAX_OPSET = 18
#: ONNX ops whose onnx2torch converter needs torchvision.
TORCHVISION_OPS = ("NonMaxSuppression", "RoiAlign")
# onnx2torch depends on torchvision, whose PyPI wheels replace a CPU torch: no dependencies.
_EXTRA = "install it with: pip install --no-deps onnx2torch"


def from_onnx(path_or_model: str | Path | Any) -> nn.Module:
    """Convert an ONNX model to a float torch module (an ``fx.GraphModule``), in eval mode.

    Args:
        path_or_model: an ``.onnx`` file or an ``onnx.ModelProto``.

    Returns:
        The torch module; call it with the ONNX graph's inputs, positionally, in order.

    Raises:
        AssetMissingError: ``onnx``/``onnx2torch`` not installed, or no such file.
        UnsupportedOpError: the graph uses ops no converter handles (all of them named).
        ModelLoadError: the file is not a valid ONNX model.

    Example:
        >>> net = qb.from_onnx("model.onnx")  # doctest: +SKIP
        >>> qnet = qb.quantize(net, "w8a8", calib_data=batches)  # doctest: +SKIP
    """
    onnx = _require("onnx")
    if isinstance(path_or_model, str | Path):
        path = Path(path_or_model)
        if not path.is_file():
            raise AssetMissingError(f"--onnx {path}: no such file")
        try:
            proto = onnx.load(str(path))
        except Exception as e:  # onnx raises DecodeError and friends, not one family
            raise ModelLoadError(f"{path}: not a readable ONNX model ({e})") from None
        where = str(path)
    else:
        proto, where = path_or_model, "the ONNX model"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelLoadError(f"{where}: invalid ONNX model ({str(e).splitlines()[0]})") from None
    convert, get_converter = _onnx2torch()
    proto = simplify(proto)
    check_ops(proto, get_converter, where)
    _warn_float_matmuls(proto, where)
    try:
        module = convert(proto)
    except NotImplementedError as e:  # a converter that refuses these attributes
        raise UnsupportedOpError(f"{where}: onnx2torch cannot convert it: {e}", []) from None
    log.info("converted %s: %d nodes", where, len(proto.graph.node))
    return module.eval()


def simplify(proto: Any) -> Any:
    """Fold constants, drop redundant casts, and turn ``MatMul`` + bias ``Add`` into ``Gemm``.

    Args:
        proto: an ``onnx.ModelProto`` (not modified).

    Returns:
        The simplified model.
    """
    # deferred: onnx and onnxscript are slow to import
    import onnx
    from onnxscript import ir, optimizer, rewriter
    from onnxscript.rewriter.rules import common

    # Only these rewrites: onnxscript's default set also turns Flatten into Reshape, which
    # onnx2torch converts to a data-dependent module torch.export cannot trace back to ONNX.
    model = ir.serde.deserialize_model(proto)
    for rules in (
        [common.no_op_cast_rule, common.cast_cast_rule],
        [common.transpose_b_matmul_add_to_gemm_rule, common.matmul_add_to_gemm_rule],
    ):
        optimizer.fold_constants(model, onnx_shape_inference=True)  # shapes the rules check
        model = rewriter.rewrite(model, pattern_rewrite_rules=rules)  # fmt: skip
    optimizer.remove_unused_nodes(model)
    out = ir.serde.serialize_model(model)
    opset = {o.domain or "": o.version for o in out.opset_import}.get("", 0)
    if opset > MAX_OPSET:  # onnx2torch's converters stop at the opset-18 forms of Shape etc.
        try:
            out = onnx.version_converter.convert_version(out, MAX_OPSET)
        except Exception as e:  # the converter raises RuntimeError/ValueError/C++ errors
            raise ModelLoadError(
                f"opset {opset}: converting to opset {MAX_OPSET} for onnx2torch failed ({e})"
            ) from None
    return out


def _warn_float_matmuls(proto: Any, where: str) -> None:
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    n = sum(1 for node in proto.graph.node
            if node.op_type == "MatMul" and any(i in consts for i in node.input))  # fmt: skip
    if n:
        log.warning(
            "%s: %d MatMul ops by constant weights stay float (they are not Gemm/Linear layers)",
            where, n,
        )  # fmt: skip


def check_ops(proto: Any, get_converter: Any, where: str) -> None:
    """Refuse a graph with ops that have no converter, naming every one.

    Args:
        proto: the ``onnx.ModelProto``.
        get_converter: onnx2torch's ``get_converter(operation_type, version, domain)``.
        where: the file, for the message.

    Raises:
        UnsupportedOpError: listing ``domain::op (opset N)`` for each unconvertible op.
    """
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    no_vision = importlib.util.find_spec("torchvision") is None
    bad: list[str] = []
    for node in proto.graph.node:
        domain = node.domain or ""
        version = opsets.get(domain, opsets.get("ai.onnx", 0))
        label = f"{domain + '::' if domain else ''}{node.op_type} (opset {version})"
        if label in bad:
            continue
        if no_vision and node.op_type in TORCHVISION_OPS:
            bad.append(label)
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            bad.append(label)
    if bad:
        raise UnsupportedOpError(
            f"{where}: no torch converter for {', '.join(bad)}; these ops cannot be quantized "
            "through onnx2torch (re-export the model without them, or from its framework)",
            bad,
        )


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        raise AssetMissingError(
            f"ONNX input needs the PyPI package {name!r}; install it with: pip install {name}"
        ) from None


def _onnx2torch() -> tuple[Any, Any]:
    if importlib.util.find_spec("onnx2torch") is None:
        raise AssetMissingError(f"ONNX input needs the PyPI package 'onnx2torch'; {_EXTRA}")
    with _torchvision_stand_in():
        # deferred: onnx2torch is an optional extra
        from onnx2torch import convert
        from onnx2torch.node_converters import get_converter
    return convert, get_converter


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """While onnx2torch imports: a ``torchvision`` whose ops refuse, if none is installed."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        yield
        return

    def refuse(*_: Any, **__: Any) -> None:
        raise UnsupportedOpError(
            f"{', '.join(TORCHVISION_OPS)} need torchvision, which is not installed",
            list(TORCHVISION_OPS),
        )

    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = refuse  # type: ignore[attr-defined]
    vision = types.ModuleType("torchvision")
    vision.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = vision, ops
    try:
        yield
    finally:
        for name in ("torchvision.ops", "torchvision"):
            if sys.modules.get(name) in (vision, ops):
                del sys.modules[name]
