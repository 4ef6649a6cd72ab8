"""Suite-wide settings."""

import os

# Searches in unit tests check behaviour on tiny models, not latency figures: time their layers
# eager (no torch.compile per search). tests/search/test_latency.py sets the modes it tests;
# the compiled default is measured in bench/bench_predicted.py.
os.environ.setdefault("QB_LATENCY_COMPILE", "0")
