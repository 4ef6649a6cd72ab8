"""Algorithms that choose quantized weights (and transform the model) to keep accuracy."""

from quantbalance.algorithms import awq as _awq  # noqa: F401 - registers 'awq'
from quantbalance.algorithms import gptq as _gptq  # noqa: F401 - registers 'gptq'
from quantbalance.algorithms import rtn as _rtn  # noqa: F401 - registers 'rtn'
from quantbalance.algorithms.base import (
    ALGORITHMS,
    NEEDS_DATA,
    QuantContext,
    parse_algorithm,
    register_algorithm,
)

__all__ = ["ALGORITHMS", "NEEDS_DATA", "QuantContext", "parse_algorithm", "register_algorithm"]

from quantbalance.algorithms import adaround as _adaround  # noqa: F401 - registers 'adaround'
from quantbalance.algorithms import bias_correction as _bias_correction  # noqa: F401 - registers
from quantbalance.algorithms import cle as _cle  # noqa: F401 - registers 'cle'
from quantbalance.algorithms import smoothquant as _smoothquant  # noqa: F401 - registers
