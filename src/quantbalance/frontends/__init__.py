"""Models and data in: Hugging Face by architecture (and, with offloading, checkpoints larger
than memory), ONNX, Keras; data files; Tasks from them.

Heavy dependencies (transformers, onnx2torch, keras) load only when a function is called.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["build_task", "from_keras", "from_onnx", "from_pretrained", "load", "read_samples"]

_WHERE = {
    "build_task": "quantbalance.frontends.task",
    "from_pretrained": "quantbalance.frontends.hf",
    "from_onnx": "quantbalance.frontends.onnx_in",
    "from_keras": "quantbalance.frontends.keras_in",
    "load": "quantbalance.frontends.checkpoint",
    "read_samples": "quantbalance.frontends.data",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'quantbalance.frontends' has no attribute {name!r}")
