"""Artifacts other engines serve: quantbalance checkpoint, ONNX QDQ, compressed-tensors, GGUF.

``qb.export(qmodel, path, format=...)`` dispatches to one writer module per format through a
small registry (``exports/registry.py``); each writer's heavy dependency is imported only when
its format is asked for.

>>> from quantbalance.exports import FORMATS
>>> FORMATS
('qb', 'onnx', 'compressed-tensors', 'gguf')
"""

from quantbalance.exports.registry import MODULES, ExportResult, export, register, writer

FORMATS = tuple(MODULES)

__all__ = ["FORMATS", "ExportResult", "export", "register", "writer"]
