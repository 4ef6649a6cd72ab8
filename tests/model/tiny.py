"""Tiny models built by the tests."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, a depthwise-separable block with a residual, pooling, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw_bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = x + self.pw(self.act(self.dw_bn(self.dw(x))))
        return self.head(x.mean(dim=(2, 3)))


class TinyRec(nn.Module):
    """A recommendation-style model: embedding tables + an MLP, fed a dict batch."""

    def __init__(self) -> None:
        super().__init__()
        self.users = nn.Embedding(50, 16)
        self.items = nn.Embedding(80, 16)
        self.mlp = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
        self.seq = nn.Conv1d(16, 16, 3, padding=1)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        u = self.users(user)
        i = self.items(item)
        i = i + self.seq(i.unsqueeze(-1)).squeeze(-1)
        return self.mlp(torch.cat([u, i], dim=-1)).squeeze(-1)


def trained_cnn(seed: int = 0) -> TinyCNN:
    """A TinyCNN with non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    m = TinyCNN()
    m.train()
    with torch.no_grad():
        for _ in range(5):
            m(torch.randn(16, 1, 12, 12) * 2 + 0.5)
        for bn in (m.bn, m.dw_bn):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def cnn_batches(n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 1, 12, 12, generator=g) * 2 + 0.5 for _ in range(n)]


def rec_batches(n: int = 2, seed: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"user": torch.randint(0, 50, (16,), generator=g),
         "item": torch.randint(0, 80, (16,), generator=g)}
        for _ in range(n)
    ]  # fmt: skip
