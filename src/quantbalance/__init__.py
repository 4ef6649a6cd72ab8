"""quantbalance: quantize networks and find, measured, the balance of size, speed and accuracy.

>>> import quantbalance as qb
>>> plan = qb.preset("w8a8")
>>> plan.name
'w8a8'
"""

from quantbalance import deploy, tasks
from quantbalance.analysis import Analysis, analyze
from quantbalance.deploy.checkpoint import save
from quantbalance.errors import (
    ArgumentError,
    AssetMissingError,
    CalibrationError,
    CheckpointError,
    ConfigError,
    FloatLayerError,
    NonFiniteError,
    NumericsError,
    PlanError,
    QuantBalanceError,
    UnsupportedError,
)
from quantbalance.evaluate import Comparison, compare, model_nbytes, sqnr
from quantbalance.exports import ExportResult, export
from quantbalance.formats import (
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    QuantizedTensor,
    Scheme,
    fake_quantize,
    quantize_tensor,
)
from quantbalance.frontends.checkpoint import load
from quantbalance.plan import PRESETS, LayerSpec, Plan, preset
from quantbalance.qat import qat
from quantbalance.quantize import QuantizationInfo, quantize, quantize_dynamic
from quantbalance.search import Budget, SearchConfig, SearchResult, search, sensitivity
from quantbalance.version import __version__


def __getattr__(name: str) -> object:
    # export_onnx imports onnx/onnxruntime, the frontends transformers/onnx2torch/keras: only
    # when asked for.
    if name == "export_onnx":
        from quantbalance.deploy.onnx_export import export_onnx

        return export_onnx
    if name in ("from_pretrained", "from_onnx", "from_keras"):
        from quantbalance import frontends

        return getattr(frontends, name)
    raise AttributeError(f"module 'quantbalance' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "Analysis",
    "ArgumentError",
    "AssetMissingError",
    "Budget",
    "CalibrationError",
    "CheckpointError",
    "Comparison",
    "ConfigError",
    "ExportResult",
    "FloatLayerError",
    "LayerSpec",
    "NonFiniteError",
    "NumericsError",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PerToken",
    "Plan",
    "PlanError",
    "QuantBalanceError",
    "QuantizationInfo",
    "QuantizedTensor",
    "Scheme",
    "SearchConfig",
    "SearchResult",
    "UnsupportedError",
    "__version__",
    "analyze",
    "compare",
    "deploy",
    "export",
    "export_onnx",
    "fake_quantize",
    "from_keras",
    "from_onnx",
    "from_pretrained",
    "load",
    "model_nbytes",
    "preset",
    "qat",
    "quantize",
    "quantize_dynamic",
    "quantize_tensor",
    "save",
    "search",
    "sensitivity",
    "sqnr",
    "tasks",
]
