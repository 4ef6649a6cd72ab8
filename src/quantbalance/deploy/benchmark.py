"""Moved to ``quantbalance.bench.benchmark``; this old name is the same module object."""

import sys

from quantbalance.bench import benchmark

sys.modules[__name__] = benchmark
