"""The search on a model of look-alike layers: every layer searched, the coverage line shown."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from transformers.pytorch_utils import Conv1D

from quantbalance.cli.search_cmd import show_result
from quantbalance.plan import preset
from quantbalance.report import render
from quantbalance.search import Budget, search
from quantbalance.search.latency import TorchLatencyModel, build_kernel, kernel_kind


class ReshapeLinear(nn.Linear):
    """A Linear subclass that reshapes in its own forward: (B, T, 2, 8) -> (B, T, 16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(-2), self.weight, self.bias)


class Mixed(nn.Module):
    """transformers' Conv1D, a Linear subclass, and a GRU (no quantized form)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = ReshapeLinear(16, 32)
        self.fc = Conv1D(32, 32)  # (in, out) = (32, 32)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, 2, 8)
        h = torch.relu(self.fc(torch.relu(self.inp(x))))
        return self.out(self.rnn(h)[0])


def test_search_covers_look_alikes_and_says_what_stays_float(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Mixed().eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(4, 6, 2, 8, generator=g) for _ in range(2)]
    with torch.no_grad():
        ref = [net(x) for x in data]

    def fidelity(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            cos = [
                F.cosine_similarity(model(x), r, dim=-1).mean()
                for x, r in zip(data, ref, strict=True)
            ]
        return {"cos": float(sum(cos) / len(cos))}

    engine = TorchLatencyModel(repeats=1, warmup=0)
    res = search(
        net, (data, fidelity), Budget(max_drop=0.01), metric="cos", presets=["int8-weight"],
        front_evals=1, progress=False, cache_dir=tmp_path, latency_model=engine,
    )  # fmt: skip
    assert set(res.sensitivity.layers) == {"inp", "fc", "out"}
    quantized = [n for n, v in res.plan.layers.items() if v is not None and v.weight is not None]
    n = len(quantized)
    assert n >= 1 and res.met_budget
    share = (
        100
        * sum(net.get_submodule(k).weight.numel() for k in quantized)
        / (16 * 32 + 32 * 32 + 32 * 8 + 2 * 96 * 32)
    )
    line = f"quantized {n} of 4 weight layers ({share:.1f} % of weights)"
    assert res.info["coverage"] == line
    assert res.info["left_float"]["rnn"].startswith("GRU has no quantized module")
    html = render(res.to_dict())
    assert line in html and "rnn: GRU has no quantized module" in html
    buf = StringIO()
    show_result(res, tmp_path / "report.html", tmp_path, Console(file=buf, width=200))
    assert line in buf.getvalue() and "left float (no quantized form): rnn: GRU" in buf.getvalue()
    # the latency model times Conv1D as the Linear the engines run, the subclass as its forward
    spec = preset("int8-weight").layers["re:.*"]
    assert kernel_kind(net.fc, spec) == "int8-weight-pack"
    assert kernel_kind(net.inp, spec) == "dequant"
    assert build_kernel(net.fc, spec, (24, 32))().shape == (24, 32)
    assert build_kernel(net.inp, spec, (4, 6, 2, 8))().shape == (4, 6, 32)
