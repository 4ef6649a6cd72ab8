"""Model factories for the export CLI tests (``--model export_factories:NAME``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from quantbalance.tasks import Task


def mlp() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    return net, [x[:32], x[32:]]


def tiny_llama() -> Task:
    """The tiny test Llama as a Task whose ``info["source"]`` is its HF folder."""
    from tiny_llama import make_tiny_llama, token_batch

    folder = Path(tempfile.mkdtemp(prefix="qb-tiny-llama-"))
    model = make_tiny_llama(folder)
    ids = token_batch(model.config.vocab_size)
    return Task("tiny-llama", model, [{"input_ids": ids}], {"input_ids": ids[:1]},
                lambda m: {}, "none", info={"source": str(folder)})  # fmt: skip


def mlp_eval() -> tuple[nn.Module, list[torch.Tensor], object]:
    """The MLP with a fidelity eval (cosine to the float outputs)."""
    net, data = mlp()
    with torch.no_grad():
        ref = [net(x) for x in data]

    def fidelity(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            pairs = zip(data, ref, strict=True)
            cos = [nn.functional.cosine_similarity(model(x), r).mean() for x, r in pairs]
        return {"cos": float(sum(cos) / len(cos))}

    return net, data, fidelity
