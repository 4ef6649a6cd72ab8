"""Quantized weights are module state: state_dict, load_state_dict, .to(), the dequantized cache."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

import quantbalance as qb
from quantbalance.deploy import load, save
from quantbalance.errors import CheckpointError
from quantbalance.nn import QuantModule, quantized_layers


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def x_in() -> torch.Tensor:
    return torch.randn(5, 16, generator=torch.Generator().manual_seed(3))


def test_state_dict_holds_the_quantized_parts_and_not_the_cache() -> None:
    q = qb.quantize(mlp(0), "w4-g128", progress=False)
    q(x_in())  # fills the dequantized caches
    keys = set(q.state_dict())
    want = {f"{i}.qweight_{p}" for i in (0, 2) for p in ("packed", "scale", "zero_point")}
    assert want <= keys and {"0.bias", "2.bias"} <= keys
    assert not any(k.rsplit(".", 1)[-1] in ("_w", "weight") for k in keys)
    assert q[0]._w is not None and "_w" in q[0]._buffers  # a real, non-persistent buffer
    qt = q[0].qweight
    assert isinstance(qt, qb.QuantizedTensor) and qt.packed is q[0].qweight_packed
    # 16·32 4-bit codes + 32 rows x 1 group of float32 scales + 32 int8 zero points
    assert qt.nbytes == 16 * 32 // 2 + 32 * 4 + 32


def test_load_state_dict_moves_codes_between_models_and_drops_the_cache() -> None:
    a = qb.quantize(mlp(0), "w8a8-dynamic", progress=False)
    b = qb.quantize(mlp(1), "w8a8-dynamic", progress=False)
    x = x_in()
    assert not torch.equal(a(x), b(x))  # b's caches are filled with its own weights
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    assert torch.equal(b[0].qweight.codes(), a[0].qweight.codes())


def test_assigning_qweight_drops_the_cache() -> None:
    a = qb.quantize(mlp(0), "int8-weight", progress=False)
    b = qb.quantize(mlp(1), "int8-weight", progress=False)
    x = x_in()
    b(x)
    assert not torch.equal(a[0].weight, b[0].weight)
    b[0].qweight = a[0].qweight
    assert torch.equal(a[0].weight, b[0].weight)


def test_to_float64_keeps_the_stored_codes_and_scales_exact() -> None:
    q = qb.quantize(mlp(0), "w8a8-dynamic", progress=False)
    x = x_in()
    y32 = q(x)
    before = {k: v.clone() for k, v in q.state_dict().items() if ".qweight_" in k}
    q.to(torch.float64)
    for k, v in q.state_dict().items():
        if ".qweight_" in k:
            assert v.dtype == before[k].dtype and torch.equal(v, before[k])
    assert q[0].weight.dtype == torch.float64 and q[0].bias.dtype == torch.float64
    y64 = q(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-5, atol=1e-5)
    assert q[0].qweight.dtype == torch.float64
    q.to(torch.float32)
    assert torch.equal(q(x), y32)


def test_torch_export_lifts_the_quantized_buffers() -> None:
    q = qb.quantize(mlp(0), "w8a8-dynamic", progress=False)
    x = x_in()
    ep = torch.export.export(q, (x,))
    lifted = set(ep.graph_signature.inputs_to_buffers.values())
    assert {"0.qweight_packed", "0.qweight_scale", "2.qweight_packed"} <= lifted
    assert q[0]._w is None  # tracing computed the weight in the graph and cached nothing
    assert torch.equal(ep.module()(x), q(x))


def header(path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def test_checkpoint_is_the_state_dict_plus_text_metadata(tmp_path) -> None:
    q = qb.quantize(mlp(0), "w4-g128", progress=False)
    path = save(q, tmp_path / "q.safetensors")
    stored = st_load(path.read_bytes())
    assert set(stored) == set(q.state_dict())
    assert all(torch.equal(stored[k], v) for k, v in q.state_dict().items())
    layers = json.loads(header(path)["__metadata__"]["layers"])
    assert layers["0"]["qweight"]["scheme"]["bits"] == 4
    assert layers["0"]["qweight"]["shape"] == [32, 16] and layers["0"]["module"] == "QLinear"
    r = load(path, mlp(5))
    assert [n for n, _ in quantized_layers(r)] == ["0", "2"]
    assert torch.equal(r(x_in()), q(x_in()))


def test_format_1_files_ask_to_be_resaved(tmp_path) -> None:
    q = qb.quantize(mlp(0), "int8-weight", progress=False)
    path = save(q, tmp_path / "q.safetensors")
    meta = header(path)["__metadata__"]
    old = tmp_path / "old.safetensors"
    old.write_bytes(st_save(st_load(path.read_bytes()), {**meta, "quantbalance.format": "1"}))
    with pytest.raises(CheckpointError, match=r"format 1 .*Re-save it"):
        load(old, mlp(0))


def test_corrupt_layer_metadata_is_a_checkpoint_error(tmp_path) -> None:
    q = qb.quantize(mlp(0), "int8-weight", progress=False)
    path = save(q, tmp_path / "q.safetensors")
    meta = header(path)["__metadata__"]
    layers = json.loads(meta["layers"])
    layers["0"]["qweight"]["shape"] = [32, 17]
    meta["layers"] = json.dumps(layers, sort_keys=True)
    from quantbalance.deploy.checkpoint import checksum

    tensors = st_load(path.read_bytes())
    meta["checksum"] = checksum(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(st_save(tensors, meta))
    with pytest.raises(CheckpointError, match=r"layer '0'.*packed codes"):
        load(bad, mlp(0))
    assert all(isinstance(m, QuantModule) for _, m in quantized_layers(q))


def test_moving_device_and_dtype_together_moves_parts_but_keeps_their_dtypes() -> None:
    q = qb.quantize(mlp(0), "w4-g128", progress=False)
    q.to("meta", torch.float64)  # no accelerator needed: "meta" is a device of its own
    lin = q[0]
    assert lin.qweight_packed.device.type == "meta" and lin.qweight_packed.dtype == torch.uint8
    assert lin.qweight_scale.device.type == "meta" and lin.qweight_scale.dtype == torch.float32
    assert lin.qweight_zero_point.dtype == torch.int8  # signed codes: zero points int8
    assert lin.bias.device.type == "meta" and lin.bias.dtype == torch.float64
    assert lin._w is None and lin.qweight.dtype == torch.float64
