"""Keras in: a Keras 3 model (in memory or a ``.keras`` file) through Keras's own ONNX export,
then the ONNX path (``frontends.onnx_in``).

Keras exports ONNX with the backend it runs on; with ``KERAS_BACKEND=torch`` that is
``torch.onnx`` (no TensorFlow needed). quantbalance sets that backend when it imports Keras
first; a Keras already imported with another backend is refused with the fix in the message
(TensorFlow's exporter needs ``tf2onnx`` and TensorFlow itself, which this extra does not pull).
The torch module takes Keras's layout (e.g. NHWC images), as the Keras model did.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.frontends.onnx_in import from_onnx

log = logging.getLogger(__name__)

EXTRA = "pip install 'quantbalance[keras]'"


def import_keras() -> Any:
    """Import Keras 3 on the torch backend.

    Returns:
        The ``keras`` module.

    Raises:
        AssetMissingError: Keras is not installed (names the extra).
        ConfigError: Keras was already imported on another backend.
    """
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras  # deferred: keras is an optional extra
    except ImportError:
        raise AssetMissingError(f"Keras models need Keras 3; install it with: {EXTRA}") from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise ConfigError(
            f"Keras runs on the {backend!r} backend; quantbalance exports Keras models through "
            "the torch backend: set KERAS_BACKEND=torch before Keras is first imported"
        )
    return keras


def from_keras(model_or_path: Any) -> nn.Module:
    """Convert a Keras 3 model to a float torch module via ONNX.

    Args:
        model_or_path: a ``keras.Model`` or a ``.keras`` file (loaded with ``safe_mode=True``:
            no arbitrary code from the file).

    Returns:
        The torch module (an ``fx.GraphModule`` of ``nn.Conv2d``/``nn.Linear``/...), taking the
        Keras model's inputs in Keras's layout.

    Raises:
        AssetMissingError: Keras (or onnx2torch) is not installed.
        UnsupportedOpError: the exported graph has ops without a torch converter.

    Example:
        >>> net = qb.from_keras("cnn.keras")  # doctest: +SKIP
        >>> qnet = qb.quantize(net, bitwidths=[8, 8, 8, 8, 8])  # doctest: +SKIP
    """
    keras = import_keras()
    if isinstance(model_or_path, str | Path):
        path = Path(model_or_path)
        if not path.is_file():
            raise AssetMissingError(f"{path}: no such Keras model file")
        model = keras.saving.load_model(str(path), safe_mode=True)
    else:
        model = model_or_path
    if not isinstance(model, keras.Model):
        raise ConfigError(f"from_keras: got {type(model).__name__}; give a keras.Model or a .keras")
    _call_once(model)
    with tempfile.TemporaryDirectory(prefix="qb-keras-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        model.export(str(onnx_path), format="onnx", verbose=False)
        log.info("exported Keras model %s to ONNX", model.name)
        return from_onnx(onnx_path)


def _call_once(model: Any) -> None:
    """Keras exports only models that have run; a freshly loaded one runs once on zeros."""
    inputs = getattr(model, "inputs", None) or []
    shapes = [tuple(1 if d is None else int(d) for d in t.shape) for t in inputs]
    if not shapes:
        raise ConfigError(
            f"Keras model {model.name!r} has no known input shape; call it once on a batch first"
        )
    zeros = [np.zeros(s, dtype="float32") for s in shapes]
    model(zeros[0] if len(zeros) == 1 else zeros)
