"""Analysis: statistics of weights and activations, per layer."""

from quantbalance.analysis.analyze import Analysis, analyze
from quantbalance.analysis.stats import tensor_stats

__all__ = ["Analysis", "analyze", "tensor_stats"]
