"""``format="qb"``: the quantbalance checkpoint (``deploy.checkpoint.save``)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from quantbalance.deploy.checkpoint import save
from quantbalance.exports.registry import ExportResult, file_sizes, register


@register("qb")
def write_qb(qmodel: nn.Module, path: Path, *, source: str | None = None) -> ExportResult:
    """Write the packed quantbalance checkpoint (one safetensors file, ``qb.load`` reads it).

    Args:
        qmodel: the quantized model.
        path: the ``.safetensors`` file.
        source: optional task name recorded so ``qb.load(path)`` can build the skeleton.

    Returns:
        The ExportResult.
    """
    out = save(qmodel, path, source=source)
    info = getattr(qmodel, "qb_info", None)
    layers = dict(info.layers) if info is not None else {}
    return ExportResult("qb", out, file_sizes(out), layers=layers)
