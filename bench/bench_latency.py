"""Deployed latency, file size and fidelity on `minilm` (batch 1 and 32 × 128 tokens).

Usage: OMP_WAIT_POLICY=PASSIVE python bench/bench_latency.py [--rounds 5] [--threads 2]

Engines measured in one run, interleaved round by round, medians reported:
float torch eager, torch bf16 eager, torch bf16 + torch.compile, ONNX Runtime quantize_dynamic
(per-channel int8, the peer), and quantbalance's presets on its torch engine (oneDNN int8 /
int4-pack kernels, bf16 elsewhere, torch.compile) and on ONNX Runtime (QDQ export).
Fidelity: mean cosine to the float model's embeddings on the 32 example sentences.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy.torch_engine import to_torch_engine


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _ort_dynamic_peer(model: nn.Module, batch: dict, tmp: Path) -> tuple[Callable, int]:
    """ONNX Runtime's own quantize_dynamic (per-channel int8) of the float model."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    f32 = tmp / "float.onnx"
    names = list(batch)
    torch.onnx.export(
        model, (), str(f32), kwargs=batch, input_names=names, output_names=["emb"],
        dynamic_axes={k: {0: "b", 1: "t"} for k in names}, dynamo=False, opset_version=17,
    )  # fmt: skip
    q8 = tmp / "ort_dynamic.onnx"
    quantize_dynamic(str(f32), str(q8), per_channel=True, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(q8), so, providers=["CPUExecutionProvider"])

    def run(b: dict) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in b.items()})[0])

    return run, q8.stat().st_size


def main() -> None:
    """Run the benchmark, write JSON rows, print a markdown table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default="w8a8-dynamic,w8a8,int8-weight,w4-g128")
    ap.add_argument("--out", default="bench/results/latency-minilm.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = qb.tasks.load("minilm", n_eval=64, n_calib=100)
    fp = task.model
    b32 = task.example_inputs
    b1 = {k: v[:1] for k, v in b32.items()}
    tmp = Path(tempfile.mkdtemp(prefix="qb-bench-"))
    engines: dict[str, Callable] = {}
    sizes: dict[str, int] = {}
    fp_bytes = qb.model_nbytes(fp)
    engines["float torch"] = lambda b: fp(**b)
    sizes["float torch"] = fp_bytes
    bf = copy.deepcopy(fp).to(torch.bfloat16)
    engines["torch bf16"] = lambda b: bf(**b)
    sizes["torch bf16"] = fp_bytes // 2
    bfc = torch.compile(copy.deepcopy(bf), dynamic=False)
    engines["torch bf16 + compile"] = lambda b: bfc(**b)
    sizes["torch bf16 + compile"] = fp_bytes // 2
    engines["ORT quantize_dynamic (peer)"], sizes["ORT quantize_dynamic (peer)"] = (
        _ort_dynamic_peer(fp, b32, tmp)
    )
    for name in args.presets.split(","):
        q = qb.quantize(fp, name, task.calib_data, progress=False)
        ckpt = qb.save(q, tmp / f"{name}.safetensors")
        eng = to_torch_engine(q)
        engines[f"qb {name} torch"] = lambda b, e=eng: e(**b)
        sizes[f"qb {name} torch"] = ckpt.stat().st_size
        if name != "w8a8-dynamic":
            path = qb.export_onnx(q, b32, tmp / f"{name}.onnx")
            sess = qb.deploy.session(path, intra_op_threads=args.threads)
            engines[f"qb {name} ORT"] = lambda b, s=sess: s(b)
            sizes[f"qb {name} ORT"] = path.stat().st_size
    times: dict[str, dict[str, list[float]]] = {k: {"b1": [], "b32": []} for k in engines}
    fidelity: dict[str, float] = {}
    with torch.inference_mode():
        ref = fp(**b32)
        for name, run in engines.items():
            for _ in range(2):
                run(b1)
                out = run(b32)
            out = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
            fidelity[name] = float(nn.functional.cosine_similarity(ref, out.float()).mean())
        for _ in range(args.rounds):
            for name, run in engines.items():
                times[name]["b1"].append(_time(lambda r=run: r(b1)))
                times[name]["b32"].append(_time(lambda r=run: r(b32)))
    rows = []
    for name in engines:
        rows.append({
            "engine": name,
            "b1_ms": statistics.median(times[name]["b1"]),
            "b32_ms": statistics.median(times[name]["b32"]),
            "bytes": sizes[name],
            "cosine_vs_float": fidelity[name],
            "threads": args.threads,
            "load_avg": os.getloadavg()[0],
            "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "torch": torch.__version__,
            "date": dt.date.today().isoformat(),
        })  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    bf32 = next(r["b32_ms"] for r in rows if r["engine"] == "torch bf16")
    lines = [
        "| engine | b1 ms | b32 ms | b32 vs bf16 | file MB | cosine vs float |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['b1_ms']:.1f} | {r['b32_ms']:.1f} | "
            f"{r['b32_ms'] / bf32:.2f}x | {r['bytes'] / 1e6:.1f} | {r['cosine_vs_float']:.5f} |"
        )
    print("\n".join(lines))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
