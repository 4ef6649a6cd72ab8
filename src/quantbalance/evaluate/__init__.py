"""Evaluation: exact sizes, SQNR, and float-vs-quantized comparison."""

from quantbalance.evaluate.compare import Comparison, check_metrics, compare
from quantbalance.evaluate.size import model_nbytes
from quantbalance.evaluate.sqnr import layer_output_sqnr, sqnr
from quantbalance.evaluate.task import Task

__all__ = [
    "Comparison",
    "Task",
    "check_metrics",
    "compare",
    "layer_output_sqnr",
    "model_nbytes",
    "sqnr",
]
