"""Which integer kernels of a QDQ graph ONNX Runtime would compute inexactly on this CPU.

ONNX Runtime fuses ``DQ(quantized activation) → MatMul/Conv ← DQ(int8 W)`` into uint8 × int8
integer kernels. On x86 without VNNI its MLAS kernels add pairs of products into a saturating
int16 (``vpmaddubsw``; ONNX Runtime's documentation recommends ``reduce_range``, i.e. 7-bit
weights, there): exact only while every int8 weight code is within ±64. uint8 weights run on
exact ``u8 × u8`` kernels.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from quantbalance.hardware import SATURATING_WEIGHT_ABSMAX

_INTEGER_OPS = ("MatMul", "Conv", "Gemm")
_PASS_THROUGH = ("Reshape", "Transpose", "Identity", "Flatten", "Squeeze", "Unsqueeze")
_ACT_QUANT = ("QuantizeLinear", "DynamicQuantizeLinear")


def saturating_layers(proto: onnx.ModelProto) -> dict[str, int]:
    """Integer-fusable nodes whose int8 weight codes exceed ±64, with their largest |code|.

    Args:
        proto: a QDQ ONNX model.

    Returns:
        Node name (or its output) -> largest absolute int8 weight code; empty when every
        fusable node is exact on CPUs without VNNI.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def source(name: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producer.get(node.input[0])
        return node

    out: dict[str, int] = {}
    for node in graph.node:
        if node.op_type not in _INTEGER_OPS or len(node.input) < 2:
            continue
        act, w = source(node.input[0]), source(node.input[1])
        if act is None or w is None or {act.op_type, w.op_type} != {"DequantizeLinear"}:
            continue
        quant = producer.get(act.input[0])
        t = inits.get(w.input[0])
        if quant is None or quant.op_type not in _ACT_QUANT or t is None:
            continue
        if t.data_type != TensorProto.INT8:
            continue
        absmax = int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max(initial=0))
        if absmax > SATURATING_WEIGHT_ABSMAX:
            out[node.name or node.output[0]] = absmax
    return out
