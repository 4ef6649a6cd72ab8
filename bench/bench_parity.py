"""Parity of the deployed engines with quantbalance's own simulation on the real minilm task.

Usage: OMP_WAIT_POLICY=PASSIVE python bench/bench_parity.py [--preset P] [--algorithm A]
       [--hardware auto|vnni|avx2]

Cosine (mean / min over the 32 example sentences) between the simulated quantized model and:
the torch engine with float32 elsewhere, the default torch engine (compiled; bf16 elsewhere only
where bf16 is native), and ONNX Runtime running the exported QDQ file; plus the task's metric
of the simulated model (cosine to float), the Plan's int8 target and the engine's kernels. Run it
again with ``ONEDNN_MAX_CPU_ISA=AVX2`` to see the int8 kernels of a CPU without VNNI.
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import torch

import quantbalance as qb
from quantbalance.deploy import session
from quantbalance.deploy.torch_engine import to_torch_engine
from quantbalance.hardware import detect

log = logging.getLogger("bench_parity")


def main() -> None:
    """Quantize minilm, deploy it three ways, log the cosines to the simulation."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="w8a8")
    ap.add_argument("--algorithm", default="smoothquant")
    ap.add_argument("--hardware", default="auto", choices=["auto", "vnni", "avx2"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    task = qb.tasks.load("minilm")
    q = qb.quantize(
        task.model, args.preset, task.calib_data, args.algorithm, progress=False,
        hardware=args.hardware,
    )  # fmt: skip
    log.info("machine: %s", detect().to_dict())
    log.info("plan hardware=%s; simulated %s", q.qb_plan.hardware, task.evaluate(q))
    batch = task.example_inputs
    with torch.no_grad():
        ref = q(**batch).float()
        fp32 = to_torch_engine(q, False, torch.float32)
        default = to_torch_engine(q)
        log.info("kernels %s, fallbacks %d", fp32.qb_engine_kernels, len(fp32.qb_engine_fallbacks))
        outs = {
            "torch engine, float32 elsewhere": fp32(**batch),
            "torch engine (default dtype, compiled)": default(**batch),
        }
    path = qb.export_onnx(q, batch, tempfile.mkdtemp() + "/model.onnx")
    outs["ONNX Runtime (QDQ)"] = session(path, intra_op_threads=2)(batch)
    for name, out in outs.items():
        c = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)
        log.info("%s+%s  %-40s mean %.6f  min %.6f", args.preset, args.algorithm, name,
                 float(c.mean()), float(c.min()))  # fmt: skip


if __name__ == "__main__":
    main()
