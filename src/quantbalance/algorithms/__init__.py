"""Algorithms that choose quantized weights (and transform the model) to keep accuracy."""

from quantbalance.algorithms import rtn as _rtn  # noqa: F401 - registers 'rtn'
from quantbalance.algorithms.base import (
    ALGORITHMS,
    NEEDS_DATA,
    QuantContext,
    parse_algorithm,
    register_algorithm,
)

__all__ = ["ALGORITHMS", "NEEDS_DATA", "QuantContext", "parse_algorithm", "register_algorithm"]
