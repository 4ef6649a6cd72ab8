"""What this CPU can run: ISA level, int8 dot-product units, native bf16, cores.

Sources, in order: the environment variables that restrict the kernels (``ONEDNN_MAX_CPU_ISA``
for oneDNN, ``ATEN_CPU_CAPABILITY`` for PyTorch's vectorized ops), ``/proc/cpuinfo`` flags where
the OS has them, and PyTorch's own CPU probes (``torch.cpu._is_*_supported``) elsewhere.

Why it matters for correctness, not only speed: x86 CPUs without VNNI (AVX2 and plain AVX-512)
compute uint8 × int8 dot products with ``vpmaddubsw``, which adds each pair of products into a
*saturating* int16. With activations in ``[0, 255]`` a pair is exact only while the weights stay
within ±64 (``2·255·64 = 32640 ≤ 32767``); full-range int8 weights overflow and the int8 kernels
of oneDNN and ONNX Runtime then compute something other than the simulated model.
``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN behave that way on any x86 machine (ONNX Runtime's own
kernels ignore it: they follow the real CPU).

>>> hw = detect()
>>> hw.int8_target in ("vnni", "avx2")
True
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

Int8Target = Literal["vnni", "avx2"]

#: Largest |weight code| that a saturating u8 × s8 pair sum holds exactly: 2·255·64 ≤ 32767.
SATURATING_WEIGHT_ABSMAX = 64

#: ONEDNN_MAX_CPU_ISA values (oneDNN's names) -> (VNNI, native bf16, AMX) that it still allows.
_ONEDNN_ISA = {
    "SSE41": (False, False, False),
    "AVX": (False, False, False),
    "AVX2": (False, False, False),
    "AVX512_CORE": (False, False, False),
    "AVX2_VNNI": (True, False, False),
    "AVX2_VNNI_2": (True, False, False),
    "AVX512_CORE_VNNI": (True, False, False),
    "AVX512_CORE_BF16": (True, True, False),
    "AVX512_CORE_FP16": (True, True, False),
    "AVX10_1_512": (True, True, False),
    "AVX512_CORE_AMX": (True, True, True),
    "AVX10_1_512_AMX": (True, True, True),
    "AVX512_CORE_AMX_FP16": (True, True, True),
    "AVX10_1_512_AMX_FP16": (True, True, True),
    "AVX10_2_512": (True, True, True),
    "AVX10_2_512_AMX_2": (True, True, True),
    "ALL": (True, True, True),
    "DEFAULT": (True, True, True),
}

_X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
_ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve")


@dataclasses.dataclass(frozen=True)
class Hardware:
    """The CPU as the int8 and bf16 kernels see it.

    Attributes:
        arch: ``platform.machine()`` (``x86_64``, ``aarch64``, ...).
        cpu_model: the CPU's name from the OS (empty when unknown).
        logical_cpus: CPUs this process may use.
        physical_cores: physical cores (None when the OS does not say).
        torch_threads: ``torch.get_num_threads()``.
        torch_capability: ``torch.backends.cpu.get_cpu_capability()`` (obeys
            ``ATEN_CPU_CAPABILITY``).
        flags: the ISA flags that matter here, as the CPU reports them (sorted).
        onednn_max_isa: ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) if set.
        avx2: AVX2 present (x86).
        avx512: AVX-512F present and allowed by ``ONEDNN_MAX_CPU_ISA``.
        cpu_vnni: the CPU has VNNI (``avx512_vnni`` or ``avx_vnni``), whatever oneDNN is told.
        vnni: VNNI usable by oneDNN (present and allowed by ``ONEDNN_MAX_CPU_ISA``).
        amx: AMX int8 tiles usable by oneDNN.
        native_bf16: bf16 dot products in hardware usable by oneDNN (``avx512_bf16``, AMX, or
            Arm ``bf16``); elsewhere bf16 matmuls are emulated and slower than float32.
        neon: Arm Advanced SIMD.
        arm_dotprod: Arm int8 dot products (``sdot``/``udot``).
    """

    arch: str
    cpu_model: str
    logical_cpus: int
    physical_cores: int | None
    torch_threads: int
    torch_capability: str
    flags: tuple[str, ...]
    onednn_max_isa: str | None
    avx2: bool
    avx512: bool
    cpu_vnni: bool
    vnni: bool
    amx: bool
    native_bf16: bool
    neon: bool
    arm_dotprod: bool

    @property
    def x86(self) -> bool:
        """Whether this is an x86-64 CPU."""
        return self.arch.lower() in ("x86_64", "amd64", "i686", "x86")

    @property
    def onednn_int8_saturates(self) -> bool:
        """oneDNN's u8 × s8 kernels saturate int16 pair sums here (x86 without VNNI/AMX)."""
        return self.x86 and not (self.vnni or self.amx)

    @property
    def ort_int8_saturates(self) -> bool:
        """ONNX Runtime's u8 × s8 kernels saturate here (it follows the real CPU, not oneDNN)."""
        return self.x86 and not (self.cpu_vnni or "amx_int8" in self.flags)

    @property
    def int8_target(self) -> Int8Target:
        """``avx2`` when any int8 engine here saturates (weights must stay within ±64), else
        ``vnni`` (full-range int8 weights are exact)."""
        return "avx2" if self.onednn_int8_saturates or self.ort_int8_saturates else "vnni"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able facts, for reports and benchmark results.

        Returns:
            Field name -> value, plus ``int8_target`` and the two saturation flags.
        """
        d = dataclasses.asdict(self)
        d["flags"] = list(self.flags)
        d["int8_target"] = self.int8_target
        d["onednn_int8_saturates"] = self.onednn_int8_saturates
        d["ort_int8_saturates"] = self.ort_int8_saturates
        return d


def from_sources(
    arch: str,
    cpuinfo: str | None,
    env: Mapping[str, str],
    torch_capability: str,
    probes: Mapping[str, bool] | None = None,
    logical_cpus: int = 1,
    torch_threads: int = 1,
) -> Hardware:
    """Build a :class:`Hardware` from explicit sources (what :func:`detect` reads).

    Args:
        arch: machine name (``x86_64``, ``aarch64``).
        cpuinfo: text of ``/proc/cpuinfo``, or None where the OS has none.
        env: environment variables.
        torch_capability: ``torch.backends.cpu.get_cpu_capability()``.
        probes: flag -> present, used when ``cpuinfo`` is None (``avx2``, ``avx512f``,
            ``avx512_vnni``, ``avx512_bf16``, ``amx_int8``).
        logical_cpus: CPUs usable by this process.
        torch_threads: intra-op threads.

    Returns:
        The hardware description.
    """
    flags, model, cores = _parse_cpuinfo(cpuinfo) if cpuinfo else (set(), "", None)
    if not cpuinfo and probes:
        flags = {k for k, v in probes.items() if v}
    isa_env = env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA")
    return Hardware(
        arch=arch,
        cpu_model=model,
        logical_cpus=logical_cpus,
        physical_cores=cores,
        torch_threads=torch_threads,
        torch_capability=torch_capability,
        flags=tuple(sorted(flags & set(_X86_FLAGS + _ARM_FLAGS))),
        onednn_max_isa=isa_env,
        **_features(flags, isa_env, arch, bool(cpuinfo)),
    )


def _features(flags: set[str], isa_env: str | None, arch: str, read_cpuinfo: bool) -> dict:
    """The CPU's features as oneDNN may use them: its flags under the ``ONEDNN_MAX_CPU_ISA`` cap."""
    isa_up = (isa_env or "ALL").upper()
    allow_vnni, allow_bf16, allow_amx = _ONEDNN_ISA.get(isa_up, (True, True, True))
    avx512_ok = isa_up not in ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")
    arm = arch.lower() in ("aarch64", "arm64")
    bf16 = bool({"avx512_bf16", "amx_bf16"} & flags) and allow_bf16 and avx512_ok
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags and avx512_ok,
        "cpu_vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "vnni": allow_vnni and (("avx512_vnni" in flags and avx512_ok) or "avx_vnni" in flags),
        "amx": "amx_int8" in flags and allow_amx,
        "native_bf16": bf16 or (arm and "bf16" in flags),
        "neon": arm and ("asimd" in flags or not read_cpuinfo),
        "arm_dotprod": arm and "asimddp" in flags,
    }


def _parse_cpuinfo(text: str) -> tuple[set[str], str, int | None]:
    """Flags, model name and physical core count from ``/proc/cpuinfo`` text."""
    flags: set[str] = set()
    model = ""
    cores: set[tuple[str, str]] = set()
    phys = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
    return flags, model, len(cores) or None


def _probes() -> dict[str, bool]:
    """PyTorch's cpuinfo probes (real hardware; used where ``/proc/cpuinfo`` is missing)."""
    names = {
        "avx2": "_is_avx2_supported",
        "avx512f": "_is_avx512_supported",
        "avx512_vnni": "_is_vnni_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_int8": "_is_amx_tile_supported",
    }
    out = {}
    for flag, fn in names.items():
        probe = getattr(torch.cpu, fn, None)
        out[flag] = bool(probe()) if callable(probe) else False
    return out


@functools.cache
def detect() -> Hardware:
    """The hardware of this process (cached: oneDNN reads its environment once, too).

    Returns:
        The :class:`Hardware`.
    """
    path = Path("/proc/cpuinfo")
    text = path.read_text(errors="replace") if path.is_file() else None
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    return from_sources(
        platform.machine(),
        text,
        os.environ,
        torch.backends.cpu.get_cpu_capability(),
        probes=None if text else _probes(),
        logical_cpus=logical,
        torch_threads=torch.get_num_threads(),
    )
