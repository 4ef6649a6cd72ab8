"""FashionNet: the compact residual CNN of the ``fashion`` benchmark task.

Built only from ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU``, ``nn.AdaptiveAvgPool2d`` and
``nn.Linear`` modules (each used once, never shared), so quantization tools can find and swap
every layer; the residual additions live in ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Module):
    """A ``kxk`` convolution (no bias), BatchNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> None:
        """Build the block.

        Args:
            c_in: input channels.
            c_out: output channels.
            kernel: kernel size (odd; padding keeps the size at stride 1).
            stride: convolution stride.
        """
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, BN, ReLU.

        Args:
            x: ``(N, c_in, H, W)``.

        Returns:
            ``(N, c_out, H / stride, W / stride)``.
        """
        return self.relu(self.bn(self.conv(x)))


class DSResidual(nn.Module):
    """Residual depthwise-separable block: ``relu(x + bn(pw(relu(bn(dw(x))))))``.

    ``dw`` is a depthwise 3x3 convolution (``groups == channels``), ``pw`` a pointwise 1x1 one.
    """

    def __init__(self, channels: int) -> None:
        """Build the block.

        Args:
            channels: input and output channels.
        """
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(N, C, H, W)``.

        Returns:
            ``(N, C, H, W)``.
        """
        y = self.relu1(self.bn1(self.dw(x)))
        y = self.bn2(self.pw(y))
        return self.relu2(x + y)


class BasicResidual(nn.Module):
    """Residual block of two dense 3x3 convolutions: ``relu(x + bn(conv(relu(bn(conv(x))))))``."""

    def __init__(self, channels: int) -> None:
        """Build the block.

        Args:
            channels: input and output channels.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(N, C, H, W)``.

        Returns:
            ``(N, C, H, W)``.
        """
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(x + y)


class FashionNet(nn.Module):
    """Compact residual CNN for 1x28x28 images, 10 classes.

    Layout (``w`` = ``width``)::

        stem    conv3x3 1->w, BN, ReLU                       28x28
        stage1  DSResidual(w)                                28x28
        down1   conv3x3 stride 2 w->2w, BN, ReLU             14x14
        stage2  BasicResidual(2w), DSResidual(2w)            14x14
        down2   conv3x3 stride 2 2w->4w, BN, ReLU            7x7
        stage3  DSResidual(4w), DSResidual(4w)               7x7
        head    global average pool, Linear 4w->10
    """

    def __init__(self, width: int = 24, num_classes: int = 10) -> None:
        """Build the network.

        Args:
            width: channels of the first stage (later stages use 2x and 4x).
            num_classes: number of output classes.
        """
        super().__init__()
        w = width
        self.stem = ConvBNReLU(1, w)
        self.stage1 = DSResidual(w)
        self.down1 = ConvBNReLU(w, 2 * w, stride=2)
        self.stage2 = nn.Sequential(BasicResidual(2 * w), DSResidual(2 * w))
        self.down2 = ConvBNReLU(2 * w, 4 * w, stride=2)
        self.stage3 = nn.Sequential(DSResidual(4 * w), DSResidual(4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            x: ``(N, 1, 28, 28)`` normalised images.

        Returns:
            ``(N, num_classes)`` logits.
        """
        x = self.stage1(self.stem(x))
        x = self.stage2(self.down1(x))
        x = self.stage3(self.down2(x))
        return self.fc(torch.flatten(self.pool(x), 1))
