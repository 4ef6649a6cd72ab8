"""Moved to ``quantbalance.bench.result``; this old name is the same module object."""

import sys

from quantbalance.bench import result

sys.modules[__name__] = result
