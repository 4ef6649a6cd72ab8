"""ONNX QDQ export and the ONNX Runtime session: graph form, file size, parity with simulation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

import quantbalance as qb
from quantbalance.deploy import export_onnx, session, to_onnx
from quantbalance.deploy.onnx_export import export_module
from quantbalance.errors import ConfigError, UnsupportedError
from quantbalance.nn import QuantModule

PRESETS = ["w8a8", "int8-weight", "w4-g128"]


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, a depthwise-separable residual block, pooling, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))  # (B, 8, H, W)
        x = self.pw(torch.relu(self.dw(x)) + x)  # (B, 16, H, W)
        return self.head(torch.relu(x).mean(dim=(2, 3)))


def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    m = TinyCNN()
    m.bn.running_mean.uniform_(-0.2, 0.2)
    m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def tiny_bert() -> nn.Module:
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel

    from quantbalance.tasks.minilm import SentenceEncoder

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    return SentenceEncoder(BertModel(cfg, add_pooling_layer=False)).eval()


def images(n: int, seed: int, batch: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 12, 12, generator=g) * 2 + 0.5 for _ in range(n)]


def sentences(n: int, seed: int, batch: int = 8, length: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 100, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        mask[: batch // 2, length // 2 :] = 0  # padded sentences
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids})
    return out


MODELS = {"cnn": (tiny_cnn, images), "bert": (tiny_bert, sentences)}
_CACHE: dict[tuple[str, str], tuple[nn.Module, nn.Module, Path]] = {}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def exported(kind: str, preset: str, folder: Path) -> tuple[nn.Module, nn.Module, Path]:
    """(float model, quantized model, exported file), built once per module."""
    if (kind, preset) not in _CACHE:
        build, data = MODELS[kind]
        m = build()
        q = qb.quantize(m, preset, calib_data=data(2, 1), progress=False)
        path = export_onnx(q, data(1, 2)[0], folder / f"{kind}_{preset}.onnx")
        _CACHE[kind, preset] = (m, q, path)
    return _CACHE[kind, preset]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def call(q: nn.Module, batch: object) -> torch.Tensor:
    with torch.no_grad():
        return q(**batch) if isinstance(batch, dict) else q(batch)


@pytest.mark.parametrize("kind", ["cnn", "bert"])
@pytest.mark.parametrize("preset", PRESETS)
def test_ort_matches_simulation(kind: str, preset: str, export_dir: Path) -> None:
    _, q, path = exported(kind, preset, export_dir)
    run = session(path, intra_op_threads=1)
    # batch and sequence length differ from the export example: the graph is dynamic
    other = MODELS[kind][1](1, 7, batch=3, **({"length": 10} if kind == "bert" else {}))[0]
    for batch in (MODELS[kind][1](1, 3)[0], other):
        got = run(batch)
        assert isinstance(got, torch.Tensor) and got.shape == call(q, batch).shape
        assert cosine(got, call(q, batch)) >= 0.9999


@pytest.mark.parametrize("kind", ["cnn", "bert"])
@pytest.mark.parametrize("preset", PRESETS)
def test_qdq_graph_form_and_size(kind: str, preset: str, export_dir: Path) -> None:
    _, q, path = exported(kind, preset, export_dir)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantModule)}
    acts = sum(m.input_quantizer is not None for m in layers.values())
    if preset != "w8a8":
        assert ops["QuantizeLinear"] == 0
    elif kind == "cnn":
        assert ops["QuantizeLinear"] == acts
    else:  # query/key/value read one input with one calibrated range: the exporter merges them
        assert ops["QuantizeLinear"] == acts - 2 * 2
    code_type = TensorProto.UINT4 if preset == "w4-g128" else TensorProto.INT8
    weight_dq = []
    for node in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        src, gathered = node.input[0], False
        while src in producer and producer[src].op_type in ("Gather", "Reshape"):
            gathered |= producer[src].op_type == "Gather"  # 8-bit embeddings: Gather, then DQ
            src = producer[src].input[0]
        if src in inits and len(inits[src].dims) in (2, 4):
            weight_dq.append((node, inits[src], gathered))
    assert len(weight_dq) == len(layers)
    assert ops["DequantizeLinear"] == len(layers) + ops["QuantizeLinear"]
    for node, codes, gathered in weight_dq:
        attrs = {a.name: a.i for a in node.attribute}
        assert codes.data_type == code_type
        scale = inits.get(node.input[1])
        if gathered:  # one scale per embedding row, gathered with the row
            assert attrs["axis"] == -1 and attrs["block_size"] == codes.dims[1]
        elif preset == "w4-g128":
            assert attrs["block_size"] == 128 and len(scale.dims) == 2
        elif len(codes.dims) == 4:  # conv weight (out, in/g, kh, kw)
            assert attrs["axis"] == 0 and list(scale.dims) == codes.dims[:1]
        else:  # MatMul weight (in, out), one scale per output column
            assert attrs["axis"] == 1 and list(scale.dims) == codes.dims[1:]
    # no float copy of any quantized weight, and the initializers hold about model_nbytes(q)
    shapes = {tuple(sorted(m.qweight.shape)) for m in layers.values()}
    shapes |= {tuple(sorted(m.weight_shape())) for m in layers.values()}
    floats = [t for t in inits.values() if t.data_type == TensorProto.FLOAT]
    assert not any(tuple(sorted(t.dims)) in shapes for t in floats)
    stored = sum(numpy_helper.to_array(t).nbytes for t in inits.values() if t.data_type
                 not in (TensorProto.UINT4, TensorProto.INT4))  # fmt: skip
    stored += sum((int(np.prod(t.dims)) + 1) // 2 for t in inits.values()
                  if t.data_type in (TensorProto.UINT4, TensorProto.INT4))  # fmt: skip
    assert stored <= 1.25 * qb.model_nbytes(q) + 512
    graph_entries = len(model.graph.node) + len(model.graph.value_info)
    assert path.stat().st_size <= stored + 4096 + 200 * graph_entries


def test_export_module_matches_simulation_in_torch() -> None:
    m = tiny_bert()
    q = qb.quantize(m, "w8a8", calib_data=sentences(2, 1), progress=False)
    batch = sentences(1, 5)[0]
    with torch.no_grad():
        assert torch.allclose(export_module(q)(**batch), q(**batch), atol=1e-6)


def test_dynamic_activations_and_session_from_model() -> None:
    m = tiny_cnn()
    q = qb.quantize_dynamic(m, {nn.Conv2d})  # per-tensor dynamic int8 inputs on convolutions
    x = images(1, 3)[0]
    ops = Counter(n.op_type for n in to_onnx(q, x).graph.node)
    assert ops["DynamicQuantizeLinear"] == 3
    run = session(q, example_inputs=x, intra_op_threads=1)
    assert cosine(run(x), call(q, x)) >= 0.9999
    out = run(x.numpy())  # numpy in, numpy out
    assert isinstance(out, np.ndarray) and out.shape == (8, 4)
    assert np.allclose(out, run(input=x).numpy() if "input" in run.input_names else out)


def test_session_inputs_by_name_dict_and_position(export_dir: Path) -> None:
    path = exported("bert", "int8-weight", export_dir)[2]
    run = session(path, intra_op_threads=1)
    batch = sentences(1, 9, batch=2)[0]
    assert run.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    ref = run(batch)
    assert torch.equal(run(**batch), ref)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert torch.equal(run(ids, mask, types), ref)
    with pytest.raises(ConfigError, match="missing inputs"):
        run(input_ids=batch["input_ids"])
    assert cosine(session(path, intra_op_threads=1, qdq=False)(batch), ref) >= 0.9999


def test_errors() -> None:
    q = qb.quantize(tiny_cnn(), "int8-weight", progress=False)
    with pytest.raises(ConfigError, match="backend='tensorrt'"):
        session("model.onnx", backend="tensorrt")
    with pytest.raises(ConfigError, match="example_inputs"):
        session(q)
    with pytest.raises(UnsupportedError, match="opset=17"):
        to_onnx(q, images(1, 0)[0], opset=17)


def test_4bit_convs_with_shared_zero_points_export_and_match(tmp_path: Path) -> None:
    """w4a8 on a CNN: the exporter merges identical 4-bit zero points (stem and dw both have 8
    channels, zero point 0) and an 8-bit activation zero point may equal them; both still work."""
    m = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4),
    ).eval()  # fmt: skip
    torch.manual_seed(0)
    data = [torch.randn(4, 1, 6, 6) for _ in range(2)]
    q = qb.quantize(m, "w4a8", calib_data=data, progress=False)
    path = export_onnx(q, data[0], tmp_path / "w4a8.onnx")
    model = onnx.load(path)
    inits = {t.name: t.data_type for t in model.graph.initializer}
    four = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0]) in four:
            assert inits[node.input[2]] == inits[node.input[0]]  # codes and zero point agree
    run = session(path, intra_op_threads=1)
    assert cosine(run(data[1]), call(q, data[1])) >= 0.9999


def test_session_without_spinning_threads(export_dir: Path) -> None:
    from quantbalance.deploy.ort import OrtSession

    _, q, path = exported("cnn", "w8a8", export_dir)
    quiet = OrtSession(path, intra_op_threads=1, spin=False)
    opts = quiet.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    batch = images(1, 3)[0]
    assert cosine(quiet(batch), call(q, batch)) >= 0.9999
