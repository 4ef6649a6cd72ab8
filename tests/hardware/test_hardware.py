import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from quantbalance.cli.main import app
from quantbalance.hardware import SATURATING_WEIGHT_ABSMAX, detect, from_sources

EPYC_AVX2 = """processor\t: 0
model name\t: AMD EPYC 7B12
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse4_2 avx fma avx2
processor\t: 1
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse4_2 avx fma avx2
"""
SPR = (
    "model name : Intel Xeon\n"
    "flags : avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
)
ARM = "processor : 0\nFeatures : fp asimd asimddp i8mm bf16 sve\n"


def hw(text: str | None, env: dict[str, str] | None = None, arch: str = "x86_64", **kw):  # type: ignore[no-untyped-def]
    return from_sources(arch, text, env or {}, "AVX2", **kw)


def test_avx2_only_cpu_saturates_and_emulates_bf16() -> None:
    h = hw(EPYC_AVX2)
    assert (h.cpu_model, h.physical_cores, h.avx2, h.avx512) == ("AMD EPYC 7B12", 2, True, False)
    assert (h.vnni, h.amx, h.native_bf16) == (False, False, False)
    assert h.onednn_int8_saturates and h.ort_int8_saturates and h.int8_target == "avx2"


def test_amx_cpu_is_exact_until_onednn_is_restricted() -> None:
    h = hw(SPR)
    assert (h.vnni, h.amx, h.native_bf16, h.int8_target) == (True, True, True, "vnni")
    r = hw(SPR, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    # oneDNN obeys the variable; ONNX Runtime's kernels follow the real CPU.
    assert (r.vnni, r.amx, r.native_bf16, r.avx512) == (False, False, False, False)
    assert r.onednn_int8_saturates and not r.ort_int8_saturates and r.int8_target == "avx2"
    v = hw(SPR, {"DNNL_MAX_CPU_ISA": "avx512_core_vnni"})
    assert (v.vnni, v.amx, v.native_bf16, v.int8_target) == (True, False, False, "vnni")


def test_arm_and_missing_cpuinfo_use_features_or_probes() -> None:
    a = hw(ARM, arch="aarch64")
    assert (a.neon, a.arm_dotprod, a.native_bf16, a.int8_target) == (True, True, True, "vnni")
    p = hw(None, probes={"avx2": True, "avx512f": True, "avx512_vnni": False})
    assert p.avx512 and not p.vnni and p.int8_target == "avx2" and p.physical_cores is None


def test_detect_matches_torch_and_round_trips_as_json() -> None:
    h = detect()
    assert h.torch_capability == torch.backends.cpu.get_cpu_capability()
    d = json.loads(json.dumps(h.to_dict()))
    assert d["int8_target"] == h.int8_target and d["logical_cpus"] >= 1
    assert 2 * 255 * SATURATING_WEIGHT_ABSMAX <= 32767 < 2 * 255 * (SATURATING_WEIGHT_ABSMAX + 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.arch = "other"  # type: ignore[misc]


def test_env_command_prints_table_and_json() -> None:
    r = CliRunner().invoke(app, ["env", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["int8_target"] == detect().int8_target
    t = CliRunner().invoke(app, ["env"])
    assert t.exit_code == 0 and "torch_capability" in t.output
