"""quantbalance: quantize networks and find, measured, the balance of size, speed and accuracy."""

from quantbalance.errors import (
    AssetMissingError,
    CalibrationError,
    CheckpointError,
    ConfigError,
    NonFiniteError,
    PlanError,
    QuantBalanceError,
    UnsupportedError,
)
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

__version__ = "0.1.0"

__all__ = [
    "AssetMissingError",
    "CalibrationError",
    "CheckpointError",
    "ConfigError",
    "NonFiniteError",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PerToken",
    "PlanError",
    "QuantBalanceError",
    "QuantizedTensor",
    "Scheme",
    "UnsupportedError",
    "__version__",
    "fake_quantize",
    "quantize_tensor",
]
