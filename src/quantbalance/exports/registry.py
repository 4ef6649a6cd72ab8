"""The export registry: one writer per artifact format, looked up by name.

A writer is ``write(qmodel, path, **options) -> ExportResult``; ``@register("name")`` adds one,
so a new format never touches :func:`quantbalance.exports.export`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quantbalance.errors import ConfigError

Writer = Callable[..., "ExportResult"]

#: format name -> module that registers its writer (imported on first use: heavy dependencies).
MODULES: dict[str, str] = {
    "qb": "quantbalance.exports.qb_format",
    "onnx": "quantbalance.exports.onnx_format",
    "compressed-tensors": "quantbalance.exports.compressed_tensors",
    "gguf": "quantbalance.exports.gguf_export",
}
_WRITERS: dict[str, Writer] = {}


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        format: the format name.
        path: the file or folder written.
        files: every file written, with its size in bytes.
        notes: facts a user must know (a lossless fallback, a layer stored in float, ...).
        layers: per quantized layer, the form it was written in (e.g. ``Q4_0``, ``pack-quantized``).
    """

    format: str
    path: Path
    files: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Total bytes on disk of every file written."""
        return sum(self.files.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary.

        Returns:
            format, path, nbytes, files, notes and layers.
        """
        return {
            "format": self.format,
            "path": str(self.path),
            "nbytes": self.nbytes,
            "files": dict(self.files),
            "notes": list(self.notes),
            "layers": dict(self.layers),
        }


def register(name: str) -> Callable[[Writer], Writer]:
    """Decorator: ``write`` becomes the writer of format ``name``.

    Args:
        name: the format name users pass as ``format=``.

    Returns:
        The decorator (it returns the writer unchanged).
    """

    def deco(fn: Writer) -> Writer:
        _WRITERS[name] = fn
        return fn

    return deco


def writer(name: str) -> Writer:
    """The writer of format ``name`` (importing its module on first use).

    Args:
        name: a format name, one of :data:`MODULES`.

    Returns:
        The writer.

    Raises:
        ConfigError: unknown format.
    """
    if name not in MODULES:
        raise ConfigError(f"unknown export format {name!r}; accepted: {', '.join(MODULES)}")
    if name not in _WRITERS:
        importlib.import_module(MODULES[name])
    return _WRITERS[name]


def export(qmodel: nn.Module, path: str | Path, format: str = "qb", **options: Any) -> ExportResult:
    """Write a quantized model as a deployable artifact.

    Args:
        qmodel: a model returned by ``qb.quantize``.
        path: the file (``qb``: ``.safetensors``, ``onnx``: ``.onnx``, ``gguf``: ``.gguf``) or
            folder (``compressed-tensors``) to write; written atomically, inputs never touched.
        format: ``qb`` (quantbalance checkpoint), ``onnx`` (QDQ graph; needs
            ``example_inputs=``), ``compressed-tensors`` (Hugging Face / vLLM folder) or ``gguf``
            (llama.cpp).
        **options: passed to the format's writer (see each module).

    Returns:
        The :class:`ExportResult` (files and sizes, and any notes such as fallbacks).

    Example:
        >>> export(qmodel, "m.gguf", format="gguf", source="hf-folder")  # doctest: +SKIP
    """
    return writer(format)(qmodel, Path(path), **options)


def file_sizes(path: Path) -> dict[str, int]:
    """Sizes of ``path`` (a file) or of every file under it (a folder).

    Args:
        path: file or folder.

    Returns:
        Relative name -> bytes.
    """
    if path.is_file():
        return {path.name: path.stat().st_size}
    return {
        str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()
    }
