"""The chosen Plan deployed and timed on this machine, next to the search's prediction.

The search predicts latency from per-layer kernels (``search.latency``); this module builds the
engine that would ship (``to_torch_engine``: integer kernels from the one kernel table, compiled)
for the chosen Plan and for the float model, times both in interleaved rounds on the example
batch, and returns the figures with the engine's name and the CPU. ``make demo`` shows them in
its table and report (``run_search(deployed=True)``).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from rich.table import Table
from torch import nn

from quantbalance.calibration.batch import call_model
from quantbalance.deploy.kernels import engine_dtype
from quantbalance.deploy.torch_engine import compile_isolated, to_torch_engine
from quantbalance.evaluate.timing import time_interleaved
from quantbalance.hardware import Hardware, detect
from quantbalance.lowering import plan_target
from quantbalance.progress import log as progress_log
from quantbalance.transform import fold_batchnorm, split_attention

log = logging.getLogger(__name__)


def isa_text(hw: Hardware) -> str:
    """A short name of the int8/bf16 capabilities the kernels see (``AVX-512 VNNI, bf16``).

    Args:
        hw: the machine.

    Returns:
        The text.
    """
    if hw.amx:
        isa = "AMX"
    elif hw.vnni:
        isa = "AVX-512 VNNI" if hw.avx512 else "AVX-VNNI"
    elif hw.avx512:
        isa = "AVX-512 (no VNNI)"
    elif hw.avx2:
        isa = "AVX2 (no VNNI)"
    else:
        isa = hw.arch + (" dotprod" if hw.arm_dotprod else "")
    return isa + (", native bf16" if hw.native_bf16 else "")


def _cast(batch: Any, dtype: torch.dtype) -> Any:
    from quantbalance.search.latency import _cast as cast

    return cast(batch, dtype)


def measure_deployed(
    model: nn.Module, result: Any, calib_data: Any, example_inputs: Any, rounds: int = 5
) -> dict[str, Any]:
    """Time the chosen Plan and the float model as deployed here, interleaved.

    Args:
        model: the float model.
        result: the ``SearchResult`` (its Plan and predictions).
        calib_data: calibration batches (static activation ranges, as the search used).
        example_inputs: the batch the latency model was timed on.
        rounds: timed rounds (the median is kept).

    Returns:
        ``{"engine", "cpu", "isa", "threads", "int8_target", "kernels", "chosen_ms",
        "float_ms", "predicted_chosen_ms", "predicted_float_ms", "load_avg"}``.
    """
    from quantbalance.quantize import quantize

    if example_inputs is None:
        example_inputs = calib_data[0]
    progress_log.info("deployed: building the chosen Plan's and the float engines")
    hw = detect()
    dt = engine_dtype(hw)
    q = quantize(model, result.plan, calib_data, progress=False)
    chosen = to_torch_engine(q)
    base = copy.deepcopy(model).eval()
    fold_batchnorm(base)
    split_attention(base)
    plain = compile_isolated(to_torch_engine(base, compile=False).to(dt))
    float_batch = _cast(example_inputs, dt)
    runs = {
        "chosen": lambda b: call_model(chosen, b),
        "float": lambda b: call_model(plain, float_batch),
    }
    with torch.inference_mode():
        for run in runs.values():  # compile and warm up
            run(example_inputs)
    progress_log.info("deployed: timing %d rounds", rounds)
    ms = time_interleaved(runs, {0: example_inputs}, rounds)
    return {
        "engine": f"quantbalance torch engine (torch.compile, {str(dt).removeprefix('torch.')})",
        "cpu": hw.cpu_model or hw.arch,
        "isa": isa_text(hw),
        "threads": torch.get_num_threads(),
        "int8_target": result.plan.hardware or plan_target(),
        "kernels": dict(getattr(chosen, "qb_engine_kernels", {})),
        "chosen_ms": ms["chosen"][0],
        "float_ms": ms["float"][0],
        "predicted_chosen_ms": float(result.chosen.latency_ms),
        "predicted_float_ms": float(result.float_point.latency_ms),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def deployed_table(d: dict[str, Any]) -> Table:
    """The measured-vs-predicted rows as a rich table.

    Args:
        d: the output of :func:`measure_deployed`.

    Returns:
        The table.
    """
    load = f", load {d['load_avg']:.1f}" if d.get("load_avg") is not None else ""
    table = Table(
        "plan", "predicted ms", "measured ms", "predicted / measured", "×faster (measured)",
        title=f"deployed latency: {d['engine']} on {d['cpu']} ({d['isa']}, {d['threads']} "
        f"threads{load})",
    )  # fmt: skip
    for name in ("chosen", "float"):
        p, m = d[f"predicted_{name}_ms"], d[f"{name}_ms"]
        table.add_row(
            name, f"{p:.1f}", f"{m:.1f}", f"{p / m:.2f}", f"{d['float_ms'] / m:.2f}"
        )  # fmt: skip
    return table
