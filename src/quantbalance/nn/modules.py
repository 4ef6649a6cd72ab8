"""Quantized modules: each holds a QuantizedTensor weight and an optional input quantizer.

A registry maps float module types to quantized ones (``@register(nn.Linear)``), so adding a
layer type never touches an ``isinstance`` chain. These modules *simulate* the quantized
arithmetic in float (dequantized weight, fake-quantized input); ``quantbalance.deploy`` runs the
same codes on integer kernels.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from quantbalance.formats import QuantizedTensor
from quantbalance.nn.act import ActQuantizer

REGISTRY: dict[type[nn.Module], type[QuantModule]] = {}


def register(float_type: type[nn.Module]) -> Callable[[type[QuantModule]], type[QuantModule]]:
    """Class decorator: ``float_type`` modules are quantized into the decorated class.

    Args:
        float_type: the float module class.

    Returns:
        The decorator.
    """

    def deco(cls: type[QuantModule]) -> type[QuantModule]:
        REGISTRY[float_type] = cls
        cls.float_type = float_type
        return cls

    return deco


def quantized_type(module: nn.Module) -> type[QuantModule] | None:
    """The quantized class for ``module`` (exact type match), or None if unsupported.

    Args:
        module: a float module.

    Returns:
        The registered QuantModule subclass or None.
    """
    return REGISTRY.get(type(module))


class QuantModule(nn.Module, metaclass=abc.ABCMeta):
    """Base class: a quantized weight, the float bias, an optional input quantizer.

    The dequantized weight is cached in a non-persistent buffer on first use, so simulation runs
    at float speed; ``qweight`` is the source of truth.
    """

    float_type: type[nn.Module] = nn.Module
    input_smooth: torch.Tensor | None

    def __init__(
        self, qweight: QuantizedTensor, bias: torch.Tensor | None, act: ActQuantizer | None
    ) -> None:
        super().__init__()
        self.qweight = qweight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.input_quantizer = act
        self.register_buffer("input_smooth", None)
        self._w: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the float module's shape (cached)."""
        if self._w is None:
            self._w = self.qweight.dequantize().reshape(self.weight_shape())
        return self._w

    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the float module's weight."""
        return self.qweight.shape

    def set_input_smooth(self, factors: torch.Tensor | None) -> None:
        """Multiply the input by per-channel ``factors`` before quantizing it.

        SmoothQuant's ``1/s`` lands here when its producer cannot absorb it (an activation
        function, or a container input that is also the residual stream): deployments fuse the
        multiply into the activation quantizer, so it costs nothing at run time.

        Args:
            factors: (in_features,) float32 multipliers, or None to remove them.
        """
        self.input_smooth = (
            None if factors is None else factors.detach().float().reshape(-1).clone()
        )

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the SmoothQuant input factors and the input quantizer, if any."""
        if self.input_smooth is not None:
            x = x * self.input_smooth.to(x.dtype)
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @classmethod
    @abc.abstractmethod
    def from_float(
        cls, module: nn.Module, qweight: QuantizedTensor, act: ActQuantizer | None
    ) -> QuantModule:
        """Build from a float module and its quantized weight.

        Args:
            module: the float module (its hyper-parameters and bias are copied).
            qweight: the quantized weight (shape: the weight's, or flattened per output).
            act: optional input quantizer.

        Returns:
            The quantized module.
        """


@register(nn.Linear)
class QLinear(QuantModule):
    """Quantized ``nn.Linear``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        qweight: QuantizedTensor,
        bias: torch.Tensor | None,
        act: ActQuantizer | None,
    ) -> None:
        super().__init__(qweight, bias, act)
        self.in_features = in_features
        self.out_features = out_features

    @classmethod
    def from_float(
        cls, module: nn.Module, qweight: QuantizedTensor, act: ActQuantizer | None
    ) -> QLinear:
        """See :meth:`QuantModule.from_float`."""
        assert isinstance(module, nn.Linear)
        return cls(module.in_features, module.out_features, qweight, module.bias, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(Q(x), dequant(W), b)``."""
        w = self.weight
        return F.linear(self.quantize_input(x), w.to(x.dtype), _cast(self.bias, x))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, weight={self.qweight.scheme.label}"


class _QConvNd(QuantModule):
    """Quantized convolution; the weight is quantized as ``(out, in/groups · k...)``."""

    conv_fn: Callable[..., torch.Tensor] = staticmethod(F.conv2d)

    def __init__(self, conv: nn.Module, qweight: QuantizedTensor, act: ActQuantizer | None) -> None:
        super().__init__(qweight, conv.bias, act)
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self._shape = tuple(conv.weight.shape)
        if conv.padding_mode != "zeros":
            from quantbalance.errors import UnsupportedError

            raise UnsupportedError(
                f"padding_mode={conv.padding_mode!r}: quantized convolutions support 'zeros'"
            )

    def weight_shape(self) -> tuple[int, ...]:
        """The float convolution's weight shape."""
        return self._shape

    @classmethod
    def from_float(
        cls, module: nn.Module, qweight: QuantizedTensor, act: ActQuantizer | None
    ) -> _QConvNd:
        """See :meth:`QuantModule.from_float`."""
        return cls(module, qweight, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(Q(x), dequant(W), b)``."""
        w = self.weight.to(x.dtype)
        return self.conv_fn(
            self.quantize_input(x),
            w,
            _cast(self.bias, x),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"groups={self.groups}, weight={self.qweight.scheme.label}"
        )


@register(nn.Conv2d)
class QConv2d(_QConvNd):
    """Quantized ``nn.Conv2d`` (grouped and depthwise included)."""

    conv_fn = staticmethod(F.conv2d)


@register(nn.Conv1d)
class QConv1d(_QConvNd):
    """Quantized ``nn.Conv1d``."""

    conv_fn = staticmethod(F.conv1d)


@register(nn.Embedding)
class QEmbedding(QuantModule):
    """Quantized ``nn.Embedding`` (row-wise scales: ``PerChannel(axis=0)``).

    Inputs are indices, so there is no input quantizer.
    """

    def __init__(self, emb: nn.Embedding, qweight: QuantizedTensor) -> None:
        super().__init__(qweight, None, None)
        self.num_embeddings = emb.num_embeddings
        self.embedding_dim = emb.embedding_dim
        self.padding_idx = emb.padding_idx

    @classmethod
    def from_float(
        cls, module: nn.Module, qweight: QuantizedTensor, act: ActQuantizer | None
    ) -> QEmbedding:
        """See :meth:`QuantModule.from_float` (``act`` is ignored: inputs are indices)."""
        assert isinstance(module, nn.Embedding)
        return cls(module, qweight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Look up dequantized rows."""
        return F.embedding(idx, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, weight={self.qweight.scheme.label}"


def _cast(b: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if b is None else b.to(x.dtype)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight a quantized module stores: convolutions flattened to ``(out, -1)``.

    Args:
        module: a supported float module.

    Returns:
        The 2-D weight view that gets quantized.
    """
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1) if w.dim() > 2 else w
