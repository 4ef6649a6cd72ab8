"""Where calibration runs: blocks visit the device one at a time, weights live elsewhere between.

``qb.quantize(..., device="cuda")`` calibrates and runs GPTQ/AWQ on the device while the model
stays where it is: the modules outside the block list (embeddings, final norm, head) go to the
device for the calibration passes, and each block goes there just before it runs and back just
after it is done (:func:`computing_on` gives those ``BlockHooks``).
Quantized weights (:class:`~quantbalance.formats.QuantizedTensor`) move with their modules.
Nothing here assumes a CPU: ``meta`` works as a device too (shapes only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from quantbalance.calibration.blocks import find_blocks
from quantbalance.calibration.hooks import BlockHooks
from quantbalance.errors import ConfigError
from quantbalance.formats import QuantizedTensor
from quantbalance.nn import QuantModule


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to calibrate on.

    Args:
        device: ``None`` (``cuda`` when available, else ``cpu``), or a device name/object.

    Returns:
        The device.

    Raises:
        ConfigError: an unknown device, or ``cuda`` without one available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: no CUDA device is available; use 'cpu'")
    return dev


def qtensor_to(qt: QuantizedTensor, device: torch.device | str) -> QuantizedTensor:
    """The same quantized tensor with its data on ``device``.

    Args:
        qt: a quantized tensor.
        device: target device (``"meta"`` drops the data, keeping shapes).

    Returns:
        A new :class:`QuantizedTensor` (``qt`` itself when already there).
    """
    fields = {
        k: getattr(qt, k).to(device)
        for k in ("packed", "scale", "zero_point", "codebook")
        if getattr(qt, k) is not None
    }
    if all(getattr(qt, k) is v for k, v in fields.items()):
        return qt
    return dataclasses.replace(qt, **fields)


def move_module(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Move parameters, buffers and quantized weights of ``module`` to ``device`` (in place).

    Args:
        module: any module.
        device: the target.

    Returns:
        ``module``.
    """
    module.to(device)
    for m in module.modules():
        if isinstance(m, QuantModule):
            m.qweight = qtensor_to(m.qweight, device)
            m._w = None  # the dequantized cache is rebuilt where the codes are
    return module


@contextmanager
def without_blocks(model: nn.Module, prefix: str) -> Iterator[nn.ModuleList]:
    """Temporarily detach the block list named ``prefix``, yielding it.

    Args:
        model: the model.
        prefix: the block list's name (from ``find_blocks``).
    """
    owner, _, leaf = prefix.rpartition(".")
    parent = model.get_submodule(owner) if owner else model
    blocks = getattr(parent, leaf)
    setattr(parent, leaf, nn.ModuleList())
    try:
        yield blocks
    finally:
        setattr(parent, leaf, blocks)


@contextmanager
def computing_on(model: nn.Module, device: torch.device | str) -> Iterator[BlockHooks]:
    """Run block-by-block calibration of ``model`` on ``device``, one block there at a time.

    Inside the block, the modules outside the block list are on ``device``; the hooks move each
    block there before it runs and back where it was when it is done. On exit the outside
    modules go back too (quantized ones included).

    Args:
        model: the model (on one device, its home).
        device: where to compute.

    Yields:
        The :class:`BlockHooks` for ``run_sequential``.
    """
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    found = find_blocks(model)
    if found is None:  # one block: the whole model visits the device
        hooks = BlockHooks(lambda _n, b: move_module(b, device), lambda _n, b: move_module(b, home))
        yield hooks
        move_module(model, home)
        return
    with without_blocks(model, found[0]):
        move_module(model, device)
    try:
        yield BlockHooks(lambda _n, b: move_module(b, device), lambda _n, b: move_module(b, home))
    finally:
        with without_blocks(model, found[0]):
            move_module(model, home)
