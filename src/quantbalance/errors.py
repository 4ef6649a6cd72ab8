"""One exception family for everything quantbalance rejects.

Every message says what was wrong, the offending value, and what would be accepted.
"""

from __future__ import annotations


class QuantBalanceError(Exception):
    """Base class of every error quantbalance raises on purpose."""


class ConfigError(QuantBalanceError, ValueError):
    """A config field (Scheme, Plan, Budget, ...) has an unknown name or an invalid value."""


class ArgumentError(ConfigError, TypeError):
    """A public function got an argument of the wrong type (or a wrong number of arguments)."""


class NumericsError(QuantBalanceError, ArithmeticError):
    """Quantization produced NaN/inf or an output drowned in noise (SQNR below the floor)."""


class NonFiniteError(QuantBalanceError, ValueError):
    """A tensor holds NaN, or nothing finite at all, where finite numbers are required."""


class CalibrationError(QuantBalanceError, ValueError):
    """Calibration data is missing, empty or does not fit the model."""


class UnsupportedError(QuantBalanceError, TypeError):
    """A layer type, dtype or scheme combination is not supported."""


class FloatLayerError(UnsupportedError):
    """``quantize(strict=True)`` would leave weight layers float that the Plan did not skip."""


class PlanError(QuantBalanceError, ValueError):
    """A Plan does not fit the model it is applied to (e.g. a name that matches nothing)."""


class CheckpointError(QuantBalanceError, ValueError):
    """A checkpoint is corrupt, foreign, from a future format, or does not match its skeleton."""


class AssetMissingError(QuantBalanceError, FileNotFoundError):
    """A task's model or data is not installed; the message says which package installs it."""


class ModelLoadError(QuantBalanceError, ValueError):
    """A model file cannot become the float model it claims to be (weights missing or newly
    initialised, an unknown architecture, an operator no converter handles)."""


class UnsupportedOpError(ModelLoadError):
    """A graph (ONNX, Keras) uses an operator the converter cannot turn into torch.

    Attributes:
        ops: the operator names that could not be converted.
    """

    def __init__(self, message: str, ops: list[str]) -> None:
        super().__init__(message)
        self.ops = ops
