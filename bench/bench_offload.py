"""Peak memory of quantizing a Hugging Face checkpoint with offloaded blocks (one process each).

Usage:
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python bench/bench_offload.py \
        [--layers 32 --hidden 2048 --intermediate 5632 --dtype bfloat16] \
        [--algorithms rtn,gptq] [--workdir /tmp/qb-offload] [--out bench/results/offload.json] \
        [--equal [--reuse]]

A random Llama-shaped checkpoint (``tests/llama_ckpt.py``; the defaults give 32 blocks and
3.1 GB of bfloat16 safetensors shards) is written once to ``--workdir``. Each algorithm then
runs ``qb.quantize(folder, "w4-g128", calib, algorithm=..., offload="disk", save_to=...)`` in a
fresh child process, which reports (MiB = 2^20 bytes):

* ``baseline_mb``: RSS after importing torch, transformers' Llama classes and quantbalance;
* ``peak_mb``: the kernel's high-water mark (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; an RSS sampler every 10 ms where that is refused) during
  ``quantize``; ``extra_mb = peak_mb - baseline_mb`` (the floor: <= 1.2 GB for >= 3 GB);
* ``checkpoint_bytes`` (input shards), ``block_bytes`` (one block's float weights),
  ``extra_over_block``; ``output_bytes`` (the quantized checkpoint), ``quantize_s``.

``--equal`` then quantizes the fully loaded model (float32) in another child and compares its
packed weights with the offloaded output, part by part, bit for bit (``--reuse``: compare the
outputs already in ``--workdir``).

``--child`` runs one measurement on an existing checkpoint (the unit test uses it too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rss import PeakRSS, rss_mb


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _folder_bytes(folder: Path, suffix: str = ".safetensors") -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffix))


def child(ckpt: Path, out: Path, algorithm: str, n_calib: int, seq: int, threads: int) -> dict:
    """One offloaded quantization in this process; the JSON row.

    Args:
        ckpt: the Hugging Face checkpoint folder.
        out: the output checkpoint folder.
        algorithm: ``rtn``, ``gptq`` or ``awq``.
        n_calib: calibration batches.
        seq: tokens per batch.
        threads: torch threads.

    Returns:
        The row.
    """
    import gc

    import torch
    from transformers import AutoConfig, LlamaForCausalLM  # noqa: F401 - part of the baseline

    import quantbalance as qb
    from llama_ckpt import calib_batches

    torch.set_num_threads(threads)
    cfg = AutoConfig.from_pretrained(ckpt)
    calib = calib_batches(n_calib, seq, cfg.vocab_size)
    gc.collect()
    baseline = rss_mb()
    reset = _reset_peak()
    t0 = time.perf_counter()
    with PeakRSS(every_s=0.01) as sampler:
        qb.quantize(str(ckpt), "w4-g128", calib, algorithm=algorithm, offload="disk",
                    save_to=out, progress=False)  # fmt: skip
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM") if reset else sampler.peak
    n_blocks = cfg.num_hidden_layers
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = h * cfg.num_key_value_heads // cfg.num_attention_heads
    per_block = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    elem = torch.finfo(getattr(torch, str(cfg.dtype).removeprefix("torch."))).bits // 8
    return {
        "algorithm": algorithm,
        "preset": "w4-g128",
        "blocks": n_blocks,
        "hidden": h,
        "intermediate": i,
        "dtype": str(cfg.dtype).removeprefix("torch."),
        "checkpoint_bytes": _folder_bytes(ckpt),
        "block_bytes": per_block * elem,
        "output_bytes": _folder_bytes(out),
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(peak, 1),
        "peak_method": "VmHWM after clear_refs" if reset else "sampler 10 ms",
        "peak_sampled_mb": round(sampler.peak, 1),
        "extra_mb": round(peak - baseline, 1),
        "extra_over_block": round((peak - baseline) * 2**20 / (per_block * elem), 2),
        "n_calib": n_calib,
        "seq": seq,
        "quantize_s": round(seconds, 1),
        "threads": threads,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def compare_child(ckpt: Path, out: Path, algorithm: str, n_calib: int, seq: int,
                  threads: int) -> dict[str, Any]:  # fmt: skip
    """Quantize the fully loaded model in this process and compare with the offloaded output.

    Args:
        ckpt: the Hugging Face checkpoint folder.
        out: the offloaded run's output folder.
        algorithm: ``rtn``, ``gptq`` or ``awq``.
        n_calib: calibration batches.
        seq: tokens per batch.
        threads: torch threads.

    Returns:
        The row: layers compared, packed parts equal bit for bit, the first differing ones.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import quantbalance as qb
    from llama_ckpt import calib_batches
    from quantbalance.deploy.sharded import read_sharded
    from quantbalance.nn import QuantModule

    torch.set_num_threads(threads)
    cfg = AutoConfig.from_pretrained(ckpt)
    calib = calib_batches(n_calib, seq, cfg.vocab_size)
    t0 = time.perf_counter()
    full = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    qb.quantize(full, "w4-g128", calib, algorithm=algorithm, inplace=True, progress=False)
    seconds = time.perf_counter() - t0
    meta, tensors = read_sharded(out)
    qmods = {n: m for n, m in full.named_modules() if isinstance(m, QuantModule)}
    parts = differ = 0
    first: list[str] = []
    for name, mod in qmods.items():
        for part, t in mod.qweight.parts().items():
            parts += 1
            if not torch.equal(tensors[f"{name}.qweight_{part}"], t):
                differ += 1
                first = [*first, f"{name}.{part}"][:5]
    return {
        "algorithm": algorithm,
        "blocks": cfg.num_hidden_layers,
        "checkpoint_bytes": _folder_bytes(ckpt),
        "layers_compared": len(qmods),
        "same_layer_set": set(json.loads(meta["layers"])) == set(qmods),
        "parts_compared": parts,
        "parts_differing": differ,
        "first_differing": first,
        "full_quantize_s": round(seconds, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def run_child(ckpt: Path, out: Path, algorithm: str, n_calib: int = 8, seq: int = 128,
              threads: int = 2, compare: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run :func:`child` (or :func:`compare_child`) in a fresh interpreter and return its row.

    Args:
        ckpt: the checkpoint folder.
        out: the output folder.
        algorithm: the algorithm.
        n_calib: calibration batches.
        seq: tokens per batch.
        threads: torch threads.
        compare: run :func:`compare_child` on ``out`` instead.

    Returns:
        The row.
    """
    cmd = [sys.executable, __file__, "--compare" if compare else "--child", "--ckpt", str(ckpt),
           "--save", str(out),
           "--algorithms", algorithm, "--n-calib", str(n_calib), "--seq", str(seq),
           "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    rows = [json.loads(x[4:]) for x in proc.stdout.splitlines() if x.startswith("ROW ")]
    if proc.returncode or not rows:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return rows[0]


def main() -> None:
    """Write the checkpoint once, run each algorithm in a child, save the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--algorithms", default="rtn,gptq")
    ap.add_argument("--workdir", default="/tmp/qb-offload")
    ap.add_argument("--out", default="bench/results/offload.json")
    ap.add_argument("--n-calib", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--equal", action="store_true",
                    help="also quantize the fully loaded model and compare the packed weights")
    ap.add_argument("--reuse", action="store_true",
                    help="with --equal: compare existing outputs instead of quantizing again")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.compare:
        row = compare_child(Path(args.ckpt), Path(args.save), args.algorithms, args.n_calib,
                            args.seq, args.threads)  # fmt: skip
        sys.stdout.write("ROW " + json.dumps(row) + "\n")
        return
    if args.child:
        row = child(Path(args.ckpt), Path(args.save), args.algorithms, args.n_calib, args.seq,
                    args.threads)  # fmt: skip
        sys.stdout.write("ROW " + json.dumps(row) + "\n")
        return
    import torch

    from llama_ckpt import make_llama_checkpoint

    work = Path(args.workdir)
    ckpt = work / f"llama-{args.layers}x{args.hidden}-{args.dtype}"
    if not (ckpt / "config.json").is_file():
        logging.info("writing the random checkpoint to %s", ckpt)
        make_llama_checkpoint(ckpt, args.layers, args.hidden, args.intermediate, args.vocab,
                              getattr(torch, args.dtype), shard="1GB")  # fmt: skip
    rows = []
    for alg in args.algorithms.split(","):
        if not (args.equal and args.reuse):
            row = run_child(ckpt, work / f"out-{alg}", alg, args.n_calib, args.seq, args.threads)
            logging.info("%s", json.dumps(row))
            rows.append(row)
        if args.equal:
            row = run_child(ckpt, work / f"out-{alg}", alg, args.n_calib, args.seq, args.threads,
                            compare=True)  # fmt: skip
            logging.info("%s", json.dumps(row))
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
