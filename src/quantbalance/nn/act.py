"""Activation quantizer: observe (calibrate) -> frozen static ranges, or dynamic per call."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from quantbalance.calibration import make_observer
from quantbalance.errors import CalibrationError
from quantbalance.formats import Scheme, fake_quantize
from quantbalance.formats.granularity import to_blocks
from quantbalance.formats.kinds import qparams_from_range


class ActQuantizer(nn.Module):
    """Fake-quantizes an activation with a uniform scheme.

    Static mode has two phases: while ``observing`` it records ranges and passes the input
    through unchanged; ``freeze()`` turns the observer's ranges into ``scale``/``zero_point``
    buffers used by every later call. Dynamic mode computes ranges from each input (per token
    with ``PerToken()``), ignoring non-finite values.

    Args:
        scheme: a uniform activation scheme (PerTensor or PerToken).
        mode: ``static`` or ``dynamic``.
        observer: observer name for static ranges.
    """

    def __init__(
        self,
        scheme: Scheme,
        mode: Literal["static", "dynamic"] = "static",
        observer: str = "minmax",
    ) -> None:
        super().__init__()
        self.scheme = scheme
        self.mode = mode
        self.observer_name = observer
        self.observer = make_observer(observer) if mode == "static" else None
        self.observing = mode == "static"
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    @classmethod
    def frozen(
        cls,
        scheme: Scheme,
        mode: Literal["static", "dynamic"] = "static",
        observer: str = "minmax",
        scale: torch.Tensor | float | None = None,
        zero_point: torch.Tensor | int | None = None,
    ) -> ActQuantizer:
        """A quantizer that is already calibrated (e.g. rebuilt from a checkpoint).

        Args:
            scheme: the activation scheme.
            mode: ``static`` or ``dynamic``.
            observer: the observer name it was calibrated with (kept for the record).
            scale: the static scale (None: 1, to be filled by ``load_state_dict``).
            zero_point: the static zero point (None: 0).

        Returns:
            The frozen quantizer (static ranges are used as given; no observing phase).
        """
        q = cls(scheme, mode, observer)
        q.observing, q.observer = False, None
        if scale is not None:
            q.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(())
        if zero_point is not None:
            q.zero_point = torch.as_tensor(zero_point).reshape(()).to(torch.int32)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` (or observe it while calibrating)."""
        if self.mode == "dynamic":
            d = x.detach()
            blocks, _ = to_blocks(d, self.scheme.granularity)
            fin = torch.isfinite(blocks)
            big = torch.finfo(blocks.dtype).max
            lo = torch.where(fin, blocks, big).amin(1)
            hi = torch.where(fin, blocks, -big).amax(1)
            scale, zp = qparams_from_range(lo, hi, self.scheme)
            return fake_quantize(x, self.scheme, scale, zp).to(x.dtype)
        if self.observing:
            assert self.observer is not None
            self.observer.update(x.detach())
            return x
        zp = None if self.scheme.symmetric else self.zero_point
        return fake_quantize(x, self.scheme, self.scale, zp).to(x.dtype)

    def freeze(self, name: str = "activation") -> None:
        """End calibration: store the observed range as scale and zero point.

        Args:
            name: layer name for error messages.
        """
        if self.mode != "static":
            return
        assert self.observer is not None
        if self.observer.lo is None:
            raise CalibrationError(
                f"{name}: static activation quantizer saw no data during calibration; the "
                "calibration batches never reached this layer"
            )
        scale, zp = self.observer.qparams(self.scheme)
        self.scale = scale.reshape(())
        if zp is not None:
            self.zero_point = zp.reshape(()).to(torch.int32)
        self.observing = False
        self.observer = None

    def extra_repr(self) -> str:
        return f"{self.scheme.label}, mode={self.mode}, observer={self.observer_name}"
