"""``qb.load``: a packed checkpoint on a float skeleton given as a module, a callable or an HF
folder / cached hub id (loaded by architecture, see ``frontends.hf``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from quantbalance.deploy.checkpoint import load as load_checkpoint
from quantbalance.deploy.sharded import is_sharded
from quantbalance.frontends.hf import from_pretrained
from quantbalance.quantize_offload import skeleton


def load(
    path: str | Path, model: nn.Module | Callable[[], nn.Module] | str | Path | None = None
) -> nn.Module:
    """Rebuild a quantized model from a checkpoint written by ``qb.save``.

    Args:
        path: the checkpoint file, or a sharded checkpoint folder (never modified).
        model: the float skeleton: a module (deep-copied, never modified; it may be on the
            ``meta`` device), a callable building one, or a Hugging Face folder / cached hub id
            (``qb.from_pretrained(model).model``; for a sharded checkpoint of a local folder,
            its ``meta`` skeleton: the float weights are never read).

    Returns:
        The quantized model in eval mode.

    Raises:
        CheckpointError: bad file, no skeleton, or a skeleton that does not match.
    """
    if isinstance(model, str | Path):
        source = model
        if is_sharded(path) and Path(source).is_dir():  # written block by block (offload=):
            # the meta skeleton: no float weights are read
            return load_checkpoint(path, lambda: skeleton(Path(source), calibration=False))
        return load_checkpoint(path, lambda: from_pretrained(source).model)
    return load_checkpoint(path, model)
