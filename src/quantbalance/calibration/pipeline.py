"""The one calibration pipeline: run batches through a model, with hooks, and a progress bar.

Everything that needs activations (static ranges, Hessians for GPTQ, statistics for analysis
and SmoothQuant/AWQ) goes through :func:`run_batches` or :func:`capture`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from quantbalance.calibration.batch import call_model
from quantbalance.errors import CalibrationError, QuantBalanceError

log = logging.getLogger(__name__)


def check_calib_data(data: Any, what: str = "calibration data") -> list[Any]:
    """Materialise and validate calibration batches.

    Args:
        data: an iterable of batches (Tensor / tuple / dict), or a single Tensor of samples.
        what: name used in errors.

    Returns:
        A non-empty list of batches.
    """
    if data is None:
        raise CalibrationError(f"{what} is required here (got None)")
    if isinstance(data, torch.Tensor):
        if data.numel() == 0:
            raise CalibrationError(f"{what} is an empty tensor of shape {tuple(data.shape)}")
        return [data]
    try:
        batches = list(data)
    except TypeError:
        raise CalibrationError(
            f"{what} must be an iterable of batches (Tensor, tuple or dict), "
            f"got {type(data).__name__}"
        ) from None
    if not batches:
        raise CalibrationError(f"{what} is empty: give at least one batch")
    for i, b in enumerate(batches):
        if b is None or isinstance(b, bool | int | float | complex | str | bytes):
            raise CalibrationError(
                f"{what}: batch {i} is {b!r:.40} ({type(b).__name__}); a batch is a Tensor, a "
                "tuple of inputs or a dict of named inputs, e.g. [torch.randn(8, 16), ...]"
            )
        if isinstance(b, torch.Tensor) and b.numel() == 0:
            raise CalibrationError(f"{what}: batch {i} is empty (shape {tuple(b.shape)})")
    return batches


def run_batches(
    model: nn.Module,
    batches: Sequence[Any],
    desc: str = "calibrating",
    progress: bool = True,
) -> None:
    """Run every batch through ``model`` without gradients.

    Args:
        model: the model (hooks and observing quantizers already in place).
        batches: validated batches.
        desc: progress-bar label.
        progress: show a progress bar.
    """
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: tensors cached here (e.g. dequantized weights) must stay
        # usable in later autograd-enabled calls.
        with torch.no_grad():
            for i, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
                try:
                    call_model(model, batch)
                except (RuntimeError, TypeError, ValueError, IndexError) as e:
                    if isinstance(e, QuantBalanceError):
                        raise
                    raise CalibrationError(
                        f"calibration batch {i} ({describe_batch(batch)}) does not fit the "
                        f"model: {type(e).__name__}: {e}"
                    ) from e
    finally:
        model.train(was_training)


def describe_batch(batch: Any) -> str:
    """Short description of a batch's structure and shapes.

    Args:
        batch: a Tensor, tuple/list or mapping.

    Returns:
        e.g. ``dict(input_ids=(32, 128) int64)``.
    """
    if isinstance(batch, torch.Tensor):
        return f"{tuple(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if isinstance(batch, dict):
        return "dict(" + ", ".join(f"{k}={describe_batch(v)}" for k, v in batch.items()) + ")"
    if isinstance(batch, tuple | list):
        return "(" + ", ".join(describe_batch(v) for v in batch) + ")"
    return type(batch).__name__


def capture(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batches: Iterable[Any],
    fn: Callable[[str, nn.Module, tuple[Any, ...], Any], None],
    desc: str = "capturing",
    progress: bool = True,
) -> None:
    """Call ``fn(name, module, inputs, output)`` for every forward of the named modules.

    Args:
        model: the model to run.
        modules: name -> submodule to hook.
        batches: batches to run.
        fn: the callback (statistics, Hessians, ...).
        desc: progress-bar label.
        progress: show a progress bar.
    """
    handles = []
    for name, mod in modules.items():

        def hook(m: nn.Module, inp: tuple[Any, ...], out: Any, _n: str = name) -> None:
            fn(_n, m, inp, out)

        handles.append(mod.register_forward_hook(hook))
    try:
        run_batches(model, check_calib_data(batches), desc=desc, progress=progress)
    finally:
        for h in handles:
            h.remove()
