"""``format="onnx"``: the QDQ ONNX graph (``deploy.onnx_export.export_onnx``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.exports.registry import ExportResult, file_sizes, register


@register("onnx")
def write_onnx(
    qmodel: nn.Module, path: Path, *, example_inputs: Any = None, **options: Any
) -> ExportResult:
    """Write the QDQ ONNX graph (see ``quantbalance.deploy.onnx_export``).

    Args:
        qmodel: the quantized model.
        path: the ``.onnx`` file (large models also write ``<name>.data`` beside it).
        example_inputs: one batch to trace with (required).
        **options: ``opset``, ``dynamic``, ... passed to ``export_onnx``.

    Returns:
        The ExportResult (the graph file and any external-data file).
    """
    # deferred: quantbalance.deploy.onnx_export imports onnx, slow to import
    from quantbalance.deploy.onnx_export import export_onnx

    if example_inputs is None:
        raise ConfigError("format='onnx' needs example_inputs= (one batch the model accepts)")
    out = export_onnx(qmodel, example_inputs, path, **options)
    files = file_sizes(out)
    data = out.with_name(out.name + ".data")
    if data.is_file():
        files[data.name] = data.stat().st_size
    info = getattr(qmodel, "qb_info", None)
    return ExportResult("onnx", out, files, layers=dict(info.layers) if info else {})
