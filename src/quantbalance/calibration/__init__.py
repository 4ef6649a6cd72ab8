"""Calibration: observers that choose ranges, and the batch convention."""

from quantbalance.calibration.histogram import Histogram
from quantbalance.calibration.observers import (
    OBSERVERS,
    EntropyObserver,
    FixedObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "FixedObserver",
    "Histogram",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "make_observer",
]

from quantbalance.calibration.batch import call_model
from quantbalance.calibration.pipeline import (
    capture,
    check_calib_data,
    describe_batch,
    run_batches,
)

__all__ += ["call_model", "capture", "check_calib_data", "describe_batch", "run_batches"]
