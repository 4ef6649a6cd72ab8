"""Hypothesis profiles of the property tests.

``ci`` (default): 500 examples per entry point, derandomized (the same examples on every run, so a
failure reproduces), no deadline (a shared CI machine is slow at times). ``dev``: 50 random
examples. Choose with ``QB_HYPOTHESIS_PROFILE=dev``; ``QB_HYPOTHESIS_EXAMPLES=N`` overrides the
count.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=500, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=50, **_COMMON)
settings.load_profile(os.environ.get("QB_HYPOTHESIS_PROFILE", "ci"))
if os.environ.get("QB_HYPOTHESIS_EXAMPLES"):
    settings.register_profile(
        "custom",
        parent=settings.get_profile(os.environ.get("QB_HYPOTHESIS_PROFILE", "ci")),
        max_examples=int(os.environ["QB_HYPOTHESIS_EXAMPLES"]),
    )
    settings.load_profile("custom")
