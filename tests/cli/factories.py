"""Model factories for the CLI tests (``--model factories:NAME``)."""

from __future__ import annotations

import torch
from torch import nn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def with_eval() -> tuple[nn.Module, list[torch.Tensor], object]:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    net = _net()
    with torch.no_grad():
        ref = net(x)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            y = model(x)
        return {"cosine": float(nn.functional.cosine_similarity(y, ref).mean())}

    return net, [x[:32], x[32:]], eval_fn


def bare() -> nn.Module:
    return _net()


def not_a_model() -> str:
    return "nope"
