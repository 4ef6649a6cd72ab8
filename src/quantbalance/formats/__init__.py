"""How a number becomes bits: schemes, granularity, packing, quantized tensors (pure maths)."""

from quantbalance.formats.granularity import (
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    from_blocks,
    grid_shape,
    to_blocks,
)
from quantbalance.formats.kinds import qparams_from_range
from quantbalance.formats.nonuniform import NF4_TABLE, kmeans_codebook
from quantbalance.formats.qtensor import QuantizedTensor
from quantbalance.formats.quantize import check_finite, fake_quantize, quantize_tensor
from quantbalance.formats.scheme import Scheme
from quantbalance.formats.ste import ste, ste_round

__all__ = [
    "NF4_TABLE",
    "Granularity",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PerToken",
    "QuantizedTensor",
    "Scheme",
    "check_finite",
    "fake_quantize",
    "from_blocks",
    "grid_shape",
    "kmeans_codebook",
    "qparams_from_range",
    "quantize_tensor",
    "ste",
    "ste_round",
    "to_blocks",
]
