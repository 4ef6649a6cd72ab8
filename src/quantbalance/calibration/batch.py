"""How a batch of data is fed to a model: the one convention every pipeline uses.

A batch is a Tensor (``model(batch)``), a tuple/list (``model(*batch)``) or a mapping
(``model(**batch)``, e.g. Hugging Face tokenizer output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one batch following the batch convention.

    Args:
        model: any module.
        batch: a Tensor, a tuple/list of positional inputs, or a mapping of keyword inputs.

    Returns:
        Whatever the model returns.
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, tuple | list):
        return model(*batch)
    return model(batch)


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside a batch, keeping its structure.

    Args:
        batch: a Tensor, tuple/list or mapping (nested allowed); other values are kept as is.
        fn: what to do to each tensor.

    Returns:
        The same structure (a mapping becomes a ``dict``) with ``fn`` applied to its tensors.
    """
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor inside a batch to ``device``.

    Args:
        batch: a Tensor, tuple/list or mapping (nested allowed).
        device: target device.

    Returns:
        The same structure with tensors on ``device``.
    """
    return map_tensors(batch, lambda t: t.to(device))


def cast_batch(batch: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of a batch in ``dtype`` (integer tensors, e.g. token ids, kept).

    Args:
        batch: a Tensor, tuple/list or mapping (nested allowed).
        dtype: the floating dtype wanted.

    Returns:
        The same structure with its floating tensors in ``dtype``.
    """
    return map_tensors(batch, lambda t: t.to(dtype) if t.is_floating_point() else t)


def batch_size(batch: Any) -> int:
    """Number of samples in a batch (leading dimension of its first tensor).

    Args:
        batch: a Tensor, tuple/list or mapping.

    Returns:
        The leading dimension of the first tensor found, or 1 if none.
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, tuple | list) or isinstance(batch, Mapping):
        for v in values:
            if isinstance(v, torch.Tensor):
                return batch_size(v)
    return 1
