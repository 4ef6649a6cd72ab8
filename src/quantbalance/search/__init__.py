"""The balance: per-layer sensitivity, costs, and the budgeted mixed-precision search.

>>> from quantbalance.search import Budget
>>> Budget(max_bytes=20e6).kind
'bytes'
"""

from quantbalance.search.cache import Cache, default_cache_dir
from quantbalance.search.config import SearchConfig
from quantbalance.search.costs import CostTable, LatencyModel, layer_nbytes
from quantbalance.search.latency import TorchLatencyModel
from quantbalance.search.pareto import PlanPoint
from quantbalance.search.result import Budget, SearchResult
from quantbalance.search.search import search
from quantbalance.search.sensitivity import (
    SensitivityTable,
    default_candidates,
    latency_candidates,
    sensitivity,
)
from quantbalance.search.solver import Problem, Solution, solve, sweep

__all__ = [
    "Budget",
    "Cache",
    "CostTable",
    "LatencyModel",
    "PlanPoint",
    "Problem",
    "SearchConfig",
    "SearchResult",
    "SensitivityTable",
    "Solution",
    "TorchLatencyModel",
    "default_cache_dir",
    "default_candidates",
    "latency_candidates",
    "layer_nbytes",
    "search",
    "sensitivity",
    "solve",
    "sweep",
]
