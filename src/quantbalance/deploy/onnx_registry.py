"""Reuse the exporter's operator registry across exports.

``torch.onnx.export(..., dynamo=True)`` builds its registry of ATen -> ONNX Script functions anew
on every call: onnxscript re-derives the IR of ~1,500 torchlib functions from their source and
the exporter computes a signature for each (measured on torch 2.13 / onnxscript 0.5: over half
of a small model's export). That registry depends only on the installed packages and the opset,
so :func:`cached_torchlib_registry` builds it once per process and opset and gives every export
made inside it a copy: each export still registers its custom translations on a registry of its
own, so an export inside the context is the same file as one outside it (tested byte for byte).

The hook reaches one private name of PyTorch's exporter (``ONNXRegistry.from_torchlib``); where
it is missing (another torch version), the context does nothing and exports are as slow as
before, never different.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOCK = threading.RLock()
_CACHE: dict[Any, Any] = {}


def _registry_class() -> Any | None:
    """torch's ``ONNXRegistry`` class if it has the expected ``from_torchlib``, else None."""
    try:
        # deferred: torch.onnx._internal is slow to import
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return None
    cls = getattr(_registration, "ONNXRegistry", None)
    raw = getattr(cls, "__dict__", {}).get("from_torchlib")
    return cls if isinstance(raw, classmethod) else None


def _copy(registry: Any) -> Any:
    """A registry that shares the cached functions but not their per-operator lists."""
    out = copy.copy(registry)
    out.functions = {k: list(v) for k, v in registry.functions.items()}
    return out


@contextmanager
def cached_torchlib_registry() -> Iterator[None]:
    """Within the block, torch's ONNX exporter builds its torchlib registry once per opset.

    Yields:
        Nothing; exports made inside start from a copy of the cached registry.
    """
    cls = _registry_class()
    if cls is None:
        yield
        return
    with _LOCK:
        original = cls.__dict__["from_torchlib"]
        if getattr(original.__func__, "_quantbalance_cached", False):  # nested: in place already
            yield
            return
        build = original.__func__

        def from_torchlib(klass: Any, *args: Any, **kwargs: Any) -> Any:
            key = (klass, id(build), args, tuple(sorted(kwargs.items())))
            if key not in _CACHE:
                _CACHE[key] = build(klass, *args, **kwargs)
            return _copy(_CACHE[key])

        from_torchlib._quantbalance_cached = True  # type: ignore[attr-defined]
        cls.from_torchlib = classmethod(from_torchlib)
        try:
            yield
        finally:
            cls.from_torchlib = original
