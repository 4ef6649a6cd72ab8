"""How a batch of data is fed to a model: the one convention every pipeline uses.

A batch is a Tensor (``model(batch)``), a tuple/list (``model(*batch)``) or a mapping
(``model(**batch)``, e.g. Hugging Face tokenizer output).
"""

from __future__ import annotations

from collections.abc import Mapping
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


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor inside a batch to ``device``.

    Args:
        batch: a Tensor, tuple/list or mapping (nested allowed).
        device: target device.

    Returns:
        The same structure with tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: move_batch(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(move_batch(v, device) for v in batch)
    return batch


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
