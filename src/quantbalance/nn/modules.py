"""Quantized modules: each holds a QuantizedTensor weight as buffers and an input quantizer.

A registry maps float module types to quantized ones (``@register(nn.Linear)``) for the exact
torch classes whose forward these modules re-implement; every other weight layer (a subclass,
``Conv3d``, a transposed convolution) is quantized in place and keeps its own forward
(:mod:`quantbalance.nn.keep_forward`). These modules *simulate* the quantized arithmetic in
float (dequantized weight, fake-quantized input); ``quantbalance.deploy`` runs the same codes on
integer kernels.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantbalance.errors import UnsupportedError
from quantbalance.formats import QuantizedTensor
from quantbalance.nn.act import ActQuantizer
from quantbalance.nn.layout import from_matrix

#: The QuantizedTensor fields stored as buffers ``qweight_<part>``.
PARTS = ("packed", "scale", "zero_point", "codebook")

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


def _runs_its_forward(_module: nn.Module, _args: tuple[Any, ...]) -> None:
    """No-op pre-hook: its presence turns off fused fast paths that would skip this module."""


class QuantModule(nn.Module, metaclass=abc.ABCMeta):
    """Base class: a quantized weight held as module state, the float bias, an input quantizer.

    The QuantizedTensor's parts are buffers (``qweight_packed``, ``qweight_scale``,
    ``qweight_zero_point``, ``qweight_codebook``; absent parts are None), so ``state_dict()``,
    ``load_state_dict()`` and ``.to(device)`` see them; its scheme, shape and dtype are plain
    attributes (checkpoints store them as metadata). ``qweight`` reassembles the QuantizedTensor
    from them. Moving the module to another dtype keeps the stored parts exact (codes and scales
    keep the scheme's dtypes) and makes ``weight`` dequantize to that dtype.

    The dequantized weight is cached in the non-persistent buffer ``_w`` on first use (so
    simulation runs at float speed) and dropped whenever the parts change (``qweight = ...``,
    ``load_state_dict``, ``.to()``).

    Every quantized module carries a no-op forward pre-hook (:func:`_runs_its_forward`): parents
    with a fused fast path that read their children's weights instead of calling them
    (``nn.TransformerEncoderLayer`` in eval mode) take their ordinary path when any child has a
    hook, so the quantized layer's own forward (its input quantizer, its kernel) always runs.
    """

    float_type: type[nn.Module] = nn.Module
    input_smooth: torch.Tensor | None
    _w: torch.Tensor | None

    def __init__(
        self, qweight: QuantizedTensor, bias: torch.Tensor | None, act: ActQuantizer | None
    ) -> None:
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self._setup(qweight, act, tuple(qweight.shape), "rows")

    def _setup(
        self,
        qweight: QuantizedTensor,
        act: ActQuantizer | None,
        shape: tuple[int, ...],
        layout: str,
    ) -> None:
        """Register the quantized state (shared by every QuantModule, in-place ones included)."""
        if _runs_its_forward not in self._forward_pre_hooks.values():
            self.register_forward_pre_hook(_runs_its_forward)
        self.register_buffer("_w", None, persistent=False)
        self.weight_layout = layout
        self._weight_shape = shape
        self.qweight = qweight
        self.input_quantizer = act
        self.register_buffer("input_smooth", None)

    @property
    def qweight(self) -> QuantizedTensor:
        """The quantized weight (a view of the module's buffers: no copy)."""
        b = self._buffers
        return QuantizedTensor(
            packed=b["qweight_packed"],  # type: ignore[arg-type]
            scale=b["qweight_scale"],
            zero_point=b["qweight_zero_point"],
            codebook=b["qweight_codebook"],
            scheme=self._qscheme,
            shape=self._qshape,
            dtype=self._qdtype,
        )

    @qweight.setter
    def qweight(self, qt: QuantizedTensor) -> None:
        for part in PARTS:
            self.register_buffer(f"qweight_{part}", getattr(qt, part))
        self._qscheme, self._qshape, self._qdtype = qt.scheme, tuple(qt.shape), qt.dtype
        self._w = None

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the float module's shape.

        Cached on first use, except while ``torch.compile``/``torch.export`` trace the module:
        then it is computed from the buffers in the graph (a traced value must not be stored).
        """
        if self._w is not None:
            return self._w
        w = from_matrix(self.weight_layout, self.qweight.dequantize(), self._weight_shape)
        w = w.contiguous()
        if not torch.compiler.is_compiling():
            self._w = w
        return w

    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the float module's weight."""
        return self._weight_shape

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        stored = {k: v for k, v in self._buffers.items() if k.startswith("qweight_")}
        out = super()._apply(fn, recurse)
        for key, before in stored.items():
            after = self._buffers[key]
            if before is not None and after is not None and after.dtype != before.dtype:
                self._buffers[key] = before.to(after.device)  # devices move, dtypes stay exact
        self._qdtype = fn(torch.empty(0, dtype=self._qdtype)).dtype
        self._w = None
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._w = None

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
        """Build from a float module and its quantized weight (the float module is untouched).

        Args:
            module: the float module (its hyper-parameters and bias are copied).
            qweight: the quantized weight (the :mod:`quantbalance.nn.layout` matrix).
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
        """See :meth:`QuantModule.from_float` (also takes transformers' ``Conv1D``)."""
        out_features, in_features = qweight.shape
        return cls(in_features, out_features, qweight, module.bias, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(Q(x), dequant(W), b)``."""
        w = self.weight
        return F.linear(self.quantize_input(x), w.to(x.dtype), _cast(self.bias, x))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, weight={self._qscheme.label}"


class _QConvNd(QuantModule):
    """Quantized convolution; the weight is quantized as ``(out, in/groups · k...)``."""

    conv_fn: Callable[..., torch.Tensor] = staticmethod(F.conv2d)

    def __init__(self, conv: nn.Module, qweight: QuantizedTensor, act: ActQuantizer | None) -> None:
        super().__init__(qweight, conv.bias, act)
        self._weight_shape = tuple(conv.weight.shape)
        self.weight_layout = "conv"
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        if conv.padding_mode != "zeros":
            raise UnsupportedError(
                f"padding_mode={conv.padding_mode!r}: quantized convolutions support 'zeros'"
            )

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
            f"groups={self.groups}, weight={self._qscheme.label}"
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
        return f"{self.num_embeddings}, {self.embedding_dim}, weight={self._qscheme.label}"


def _cast(b: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if b is None else b.to(x.dtype)
