"""Simulation = deployment on CPUs whose int8 kernels saturate (x86 without VNNI).

Every test here runs on any CPU: the saturating machine is described (``from_sources``), the
integer kernels actually run are exact for the models they get, and the fallbacks are exact.
``make test`` also runs this folder with ``ONEDNN_MAX_CPU_ISA=AVX2``, where oneDNN saturates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy import load, save
from quantbalance.deploy.kernels import LayerDesc, choose
from quantbalance.deploy.onnx_export import to_onnx
from quantbalance.deploy.ort import OrtSession
from quantbalance.deploy.ort_check import saturating_layers
from quantbalance.deploy.torch_engine import to_torch_engine
from quantbalance.deploy.torch_kernels import onednn_available
from quantbalance.errors import ConfigError, UnsupportedError
from quantbalance.hardware import from_sources

AVX2 = from_sources("x86_64", "flags : sse4_2 avx fma avx2\n", {}, "AVX2")
VNNI = from_sources("x86_64", "flags : avx2 avx512f avx512_vnni avx512_bf16\n", {}, "AVX512")
pytestmark = pytest.mark.isa
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="no oneDNN int8 kernels")


class Net(nn.Module):
    """An embedding (indices), a conv on an image and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 24)

    def forward(self, img: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(img)).mean(dim=(2, 3)) + self.emb(idx)
        return self.head(h)


def net() -> Net:
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():  # large outliers: full-range codes matter
        m.head.weight[:, 0] *= 8
        m.conv.weight[:, 0] *= 8
    return m


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g) * 3, torch.randint(0, 10, (4,), generator=g)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def quantized(hardware: str, plan: str = "w8a8") -> nn.Module:
    return qb.quantize(
        net(), plan, calib_data=[batch(), batch(2)], hardware=hardware, progress=False
    )


def test_avx2_target_narrows_only_weights_that_meet_int8_activations() -> None:
    q = quantized("avx2")
    assert q.qb_plan.hardware == "avx2"
    for layer in (q.head, q.conv):
        assert layer.qweight.scheme.bits == 7
        codes = layer.qweight.codes().int() + layer.qweight.scheme.qmin
        assert int(codes.min()) == -64 and int(codes.max()) <= 63
    assert q.emb.qweight.scheme.bits == 8  # its inputs are indices
    assert quantized("vnni").head.qweight.scheme.bits == 8
    assert quantized("avx2", "int8-weight").head.qweight.scheme.bits == 8  # float activations
    with pytest.raises(ConfigError, match="accepted: auto, vnni, avx2"):
        qb.quantize(net(), "int8-weight", hardware="arm", progress=False)


def test_auto_keeps_a_plans_own_target_and_the_checkpoint_records_it(tmp_path: Path) -> None:
    plan = qb.preset("w8a8").model_copy(update={"hardware": "avx2"})
    q = qb.quantize(net(), plan, calib_data=[batch()], progress=False)
    assert q.head.qweight.scheme.bits == 7
    r = load(save(q, tmp_path / "q.safetensors"), net())
    assert r.qb_plan.hardware == "avx2" and r.head.qweight.scheme.bits == 7
    assert torch.equal(r(*batch()), q(*batch()))


@needs_onednn
def test_torch_engine_passes_over_saturating_int8_and_stays_exact() -> None:
    q = quantized("vnni")
    e = to_torch_engine(q, compile=False, dtype=torch.float32, hardware=AVX2)
    assert e.qb_engine_kernels == {"embedding": 1, "dequant": 2}
    assert "hardware='avx2'" in e.qb_engine_fallbacks["head"]
    with torch.no_grad():
        torch.testing.assert_close(e(*batch()), q(*batch()), atol=1e-4, rtol=1e-4)
    with pytest.raises(UnsupportedError, match="saturate int16 pair sums"):
        to_torch_engine(q, compile=False, hardware=AVX2, inexact="error")
    k, reasons = choose(LayerDesc.of_module(q.head), VNNI)
    assert k.name == "int8-onednn" and reasons == []


@needs_onednn
def test_avx2_model_runs_int8_kernels_exactly_on_every_cpu() -> None:
    q = quantized("avx2")
    e = to_torch_engine(q, compile=False, dtype=torch.float32, hardware=AVX2)
    assert e.qb_engine_kernels == {"embedding": 1, "int8-onednn-conv": 1, "int8-onednn": 1}
    assert e.qb_engine_fallbacks == {}
    with torch.no_grad():  # the real kernels of this machine, whatever its ISA
        torch.testing.assert_close(e(*batch()), q(*batch()), atol=1e-4, rtol=1e-4)


def test_ort_runs_saturating_graphs_as_float_qdq_and_avx2_graphs_as_integers() -> None:
    full, narrow = quantized("vnni"), quantized("avx2")
    blob = to_onnx(full, batch(), dynamic=False).SerializeToString()
    assert set(saturating_layers(to_onnx(full, batch(), dynamic=False))) and not (
        saturating_layers(to_onnx(narrow, batch(), dynamic=False))
    )
    s = OrtSession(blob, hardware=AVX2)
    assert s.saturating and not s.qdq
    with torch.no_grad():
        want = full(*batch()).numpy()
    np.testing.assert_allclose(s(*batch()).numpy(), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(UnsupportedError, match="hardware='avx2'"):
        OrtSession(blob, hardware=AVX2, inexact="error")
    assert OrtSession(blob, hardware=VNNI).qdq
    n = OrtSession(to_onnx(narrow, batch(), dynamic=False).SerializeToString(), hardware=AVX2)
    assert n.qdq and not n.saturating
    assert cos(torch.as_tensor(n(*batch())), narrow(*batch()).detach()) > 0.9999


@needs_onednn
def test_this_machines_engine_matches_the_simulation_for_full_range_int8() -> None:
    from quantbalance.hardware import detect

    q = quantized("vnni")
    e = to_torch_engine(q, compile=False, dtype=torch.float32)
    int8 = 0 if detect().onednn_int8_saturates else 1
    assert e.qb_engine_kernels.get("int8-onednn", 0) == int8
    with torch.no_grad():
        torch.testing.assert_close(e(*batch()), q(*batch()), atol=1e-4, rtol=1e-4)


def test_int4_kernel_only_takes_output_widths_it_can_pack() -> None:
    # _convert_weight_to_int4pack needs N % 16 == 0: other widths run (and are timed) dequantized
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24)).eval()
    q = qb.quantize(net, qb.Plan(layers={"re:.*": qb.LayerSpec(
        weight=qb.Scheme(4, symmetric=False, granularity=qb.PerGroup(32)))}), progress=False)
    x = torch.randn(5, 64)
    eng = to_torch_engine(q, compile=False, dtype=torch.float32)
    assert eng.qb_engine_kernels == {"dequant": 1, "int4-pack": 1}
    torch.testing.assert_close(eng(x), q(x), rtol=0.02, atol=0.02)  # bf16 activations (int4-pack)


def test_int8_weight_pack_only_where_bf16_is_native() -> None:
    # without native bf16, _weight_int8pack_mm ran 33x slower than float: the dequantized form
    # (the same numbers) runs instead, and that is not an inexactness (no reason, no error)
    lin = nn.Sequential(nn.Linear(32, 16)).eval()
    q = qb.quantize(lin, "int8-weight", progress=False)
    desc = LayerDesc.of_module(q[0])
    assert choose(desc, VNNI)[0].name == "int8-weight-pack"
    k, reasons = choose(desc, AVX2)
    assert (k.name, reasons) == ("dequant", [])
    eng = to_torch_engine(q, compile=False, inexact="error", hardware=AVX2)
    x = torch.randn(3, 32)
    assert eng.qb_engine_kernels == {"dequant": 1}
    torch.testing.assert_close(eng(x), q(x))
