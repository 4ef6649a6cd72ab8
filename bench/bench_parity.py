"""Parity of the deployed engines with quantbalance's own simulation on the real minilm task.

Usage: OMP_WAIT_POLICY=PASSIVE python bench/bench_parity.py [--preset P] [--algorithm A]

Cosine (mean / min over the 32 example sentences) between the simulated quantized model and:
the torch engine with float32 elsewhere, the default torch engine (bf16 elsewhere, compiled),
and ONNX Runtime running the exported QDQ file.
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import torch

import quantbalance as qb
from quantbalance.deploy import session
from quantbalance.deploy.torch_engine import to_torch_engine

log = logging.getLogger("bench_parity")


def main() -> None:
    """Quantize minilm, deploy it three ways, log the cosines to the simulation."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="w8a8")
    ap.add_argument("--algorithm", default="smoothquant")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    task = qb.tasks.load("minilm")
    q = qb.quantize(task.model, args.preset, task.calib_data, args.algorithm, progress=False)
    batch = task.example_inputs
    with torch.no_grad():
        ref = q(**batch).float()
        outs = {
            "torch engine, float32 elsewhere": to_torch_engine(q, False, torch.float32)(**batch),
            "torch engine, bf16 elsewhere (default)": to_torch_engine(q)(**batch),
        }
    path = qb.export_onnx(q, batch, tempfile.mkdtemp() + "/model.onnx")
    outs["ONNX Runtime (QDQ)"] = session(path, intra_op_threads=2)(batch)
    for name, out in outs.items():
        c = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)
        log.info("%s+%s  %-40s mean %.6f  min %.6f", args.preset, args.algorithm, name,
                 float(c.mean()), float(c.min()))  # fmt: skip


if __name__ == "__main__":
    main()
