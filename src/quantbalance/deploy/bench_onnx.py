"""Moved to ``quantbalance.bench.onnx_file``; this old name is the same module object."""

import sys

from quantbalance.bench import onnx_file

sys.modules[__name__] = onnx_file
