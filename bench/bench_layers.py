"""Weight layers whatever their class: coverage before and after, output SQNR, checkpoint bytes.

Three models made of layers that are Linear or Conv in all but name (random weights, seeded):
``tf-cnn`` (TensorFlow-style "same"-padding ``Conv2d`` subclasses, a transposed convolution, a
``Linear`` that flattens its input), ``gpt2`` (transformers' ``GPT2LMHeadModel``: every
projection is a ``Conv1D``) and ``video`` (``Conv3d``). For each: how many weight layers the
exact-type registry of 5e9e8e7 would have quantized, the coverage line now, the output SQNR of the
quantized model against float, and the checkpoint's data bytes against ``qb.model_nbytes``.

Usage:
    HF_HUB_OFFLINE=1 python bench/bench_layers.py

Appends one JSON row per model to ``bench/results/layers.json``; prints a table.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import quantbalance as qb
from quantbalance.evaluate.sqnr import sqnr
from quantbalance.transform import coverage

OLD_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)  # the registry matched exact types


class Conv2dSame(nn.Conv2d):
    """TensorFlow "SAME" padding computed in forward (timm's ``Conv2dSame`` pattern)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(
            x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class FlattenLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)


class TfCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 16, 3, stride=2)
        self.blocks = nn.ModuleList(
            nn.Sequential(Conv2dSame(16, 16, 3, groups=16), nn.ReLU(), nn.Conv2d(16, 16, 1))
            for _ in range(3)
        )
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = FlattenLinear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))  # (B, 16, 8, 8)
        for b in self.blocks:
            x = x + b(x)
        return self.head(torch.relu(self.up(x)))


class Video(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(3, 16, 3, padding=1)
        self.c2 = nn.Conv3d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(dim=(2, 3, 4)))


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=4,
                                      n_head=4))  # fmt: skip


def models() -> dict[str, tuple[Any, Any, str]]:
    g = torch.Generator().manual_seed(1)
    return {
        "tf-cnn": (TfCnn, lambda: torch.randn(8, 3, 16, 16, generator=g), "w8a8"),
        "gpt2": (gpt2, lambda: torch.randint(0, 512, (4, 32), generator=g), "w8a8-dynamic"),
        "video": (Video, lambda: torch.randn(4, 3, 4, 8, 8, generator=g), "w8a8"),
    }


def old_count(model: nn.Module, preset: str) -> int:
    """Weight layers 5e9e8e7 quantized: exact registered types, resolved by the preset."""
    exact = {n: type(m).__name__ for n, m in model.named_modules() if type(m) in OLD_TYPES}
    return len(qb.preset(preset).resolve(exact))


def out(y: Any) -> torch.Tensor:
    return y.logits if hasattr(y, "logits") else y


def row(name: str, make: Any, data: Any, preset: str) -> dict[str, Any]:
    torch.manual_seed(0)
    m = make().eval()
    calib = [data() for _ in range(4)]
    x = data()
    q = qb.quantize(m, preset, calib_data=calib, progress=False)
    with torch.no_grad():
        db = sqnr(out(m(x)), out(q(x)))
    with tempfile.TemporaryDirectory() as d:
        path = qb.save(q, Path(d) / "q.safetensors")
        raw = path.read_bytes()
        data_bytes = len(raw) - 8 - struct.unpack("<Q", raw[:8])[0]
        exact = torch.equal(out(qb.load(path, m)(x)), out(q(x)))
    cov = coverage(m)
    return {
        "model": name, "preset": preset, "weight_layers": cov.total,
        "before": f"{old_count(m, preset)} of {cov.total}", "after": q.qb_info.summary,
        "left_float": q.qb_info.coverage.left_float(), "sqnr_db": round(db, 2),
        "float_bytes": qb.model_nbytes(m), "quant_bytes": qb.model_nbytes(q),
        "checkpoint_data_bytes": data_bytes, "roundtrip_exact": exact,
        "date": dt.date.today().isoformat(), "torch": torch.__version__,
    }  # fmt: skip


def main() -> None:
    results = Path(__file__).parent / "results" / "layers.json"
    rows = json.loads(results.read_text()) if results.exists() else []
    for name, (make, data, preset) in models().items():
        r = row(name, make, data, preset)
        rows.append(r)
        print(f"{name:7s} {preset:13s} before {r['before']:9s} after: {r['after']}; "
              f"SQNR {r['sqnr_db']:.1f} dB; bytes {r['float_bytes']} -> {r['quant_bytes']} "
              f"(checkpoint data {r['checkpoint_data_bytes']}, exact round trip "
              f"{r['roundtrip_exact']}); float: {r['left_float']}")  # fmt: skip
    results.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
