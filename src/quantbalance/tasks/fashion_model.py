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


class _Residual(nn.Module):
    """``relu(x + bn(second(relu(bn(first(x))))))``: the body both residual blocks share.

    Each subclass gives its two convolutions and the names they are kept under (the names are
    the model's ``state_dict`` keys, e.g. ``stage1.dw.weight``).
    """

    def __init__(
        self, channels: int, names: tuple[str, str], first: nn.Conv2d, second: nn.Conv2d
    ) -> None:
        """Build the block.

        Args:
            channels: input and output channels.
            names: attribute names of ``first`` and ``second``.
            first: the first convolution.
            second: the second convolution.
        """
        super().__init__()
        self.conv_names = names
        setattr(self, names[0], first)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        setattr(self, names[1], second)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``; each convolution is looked up by its name, so a
        layer swapped in by quantization is the one that runs."""
        first, second = (getattr(self, n) for n in self.conv_names)
        y = self.relu1(self.bn1(first(x)))
        y = self.bn2(second(y))
        return self.relu2(x + y)


class DSResidual(_Residual):
    """Residual depthwise-separable block: ``relu(x + bn(pw(relu(bn(dw(x))))))``.

    ``dw`` is a depthwise 3x3 convolution (``groups == channels``), ``pw`` a pointwise 1x1 one.
    """

    def __init__(self, channels: int) -> None:
        """Build the block.

        Args:
            channels: input and output channels.
        """
        dw = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        super().__init__(channels, ("dw", "pw"), dw, nn.Conv2d(channels, channels, 1, bias=False))


class BasicResidual(_Residual):
    """Residual block of two dense 3x3 convolutions: ``relu(x + bn(conv(relu(bn(conv(x))))))``."""

    def __init__(self, channels: int) -> None:
        """Build the block.

        Args:
            channels: input and output channels.
        """
        convs = [nn.Conv2d(channels, channels, 3, 1, 1, bias=False) for _ in range(2)]
        super().__init__(channels, ("conv1", "conv2"), *convs)


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
