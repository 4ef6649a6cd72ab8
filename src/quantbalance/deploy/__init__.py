"""Deployment: packed checkpoints, ONNX QDQ export and an ONNX Runtime session.

Names load lazily, so ``import quantbalance.deploy`` does not pull in onnx/onnxruntime until an
export or a session is asked for.

>>> from quantbalance.deploy import export_onnx, load, save, session
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "FORMAT_VERSION": "checkpoint",
    "load": "checkpoint",
    "save": "checkpoint",
    "export_onnx": "onnx_export",
    "to_onnx": "onnx_export",
    "OrtSession": "ort",
    "session": "ort",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'quantbalance.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"quantbalance.deploy.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
