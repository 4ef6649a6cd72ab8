"""Moved to ``quantbalance.bench.engines``; this old name is the same module object."""

import sys

from quantbalance.bench import engines

sys.modules[__name__] = engines
