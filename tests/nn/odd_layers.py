"""Weight layers that are Linear or Conv in all but name, and small models built of them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D


class Conv2dSame(nn.Conv2d):
    """TensorFlow "SAME" padding computed in forward (the pattern of timm's ``Conv2dSame``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, padding=0, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad order: last dimension first
        sizes, kernels, strides = x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]
        for size, k, s in zip(sizes, kernels, strides, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class FlattenLinear(nn.Linear):
    """A Linear that flattens its (B, C, H, W) input itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)  # (B, C·H·W) -> (B, out)


class SameCNN(nn.Module):
    """Two same-padding convolutions, a transposed convolution, a flattening Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.dw = Conv2dSame(8, 8, 3, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = FlattenLinear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))  # (B, 8, 4, 4) from 7x7 inputs
        x = torch.relu(self.dw(x))
        return self.head(torch.relu(self.up(x)))  # up: (B, 4, 8, 8)


class GPT2MLP(nn.Module):
    """transformers' ``Conv1D`` (weight (in, out)) in a GPT-2 style MLP with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.c_fc = Conv1D(64, 16)
        self.c_proj = Conv1D(16, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c_proj(F.gelu(self.c_fc(x)))  # (B, T, 16)


class Video(nn.Module):
    """A Conv3d over (B, C, T, H, W) clips and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


def make(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    """``cls()`` with a fixed seed, in eval mode."""
    torch.manual_seed(seed)
    return cls().eval()


def batches(shape: tuple[int, ...], n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    """``n`` seeded standard-normal batches of ``shape``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]
