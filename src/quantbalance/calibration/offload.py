"""Blocks whose weights live elsewhere: load a block's tensors when it runs, drop them after.

A model built on the ``meta`` device (shapes, no data) is calibrated block by block; the
block-by-block runner (:func:`~quantbalance.calibration.sequential.run_sequential`) calls
:class:`BlockHooks` around each block, and the hooks here bring the block's tensors in from a
:class:`TensorSource` (:func:`materialize`) and send them back to ``meta`` afterwards
(:func:`drop`), so that only one block's weights are resident at a time.

* :class:`SafetensorsShards`: a folder of safetensors files (the Hugging Face layout:
  ``model.safetensors`` or shards listed in ``model.safetensors.index.json``); each load opens
  the files it needs memory-mapped, copies the requested tensors out and closes the maps, so
  pages read for one block do not stay resident for the rest of the run.
* :class:`InMemory`: every tensor read once into host memory (``offload="cpu"``: weights on the
  host, the calibration on an accelerator).

Every tensor is placed on the ``device`` asked for; nothing here assumes a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import nn

from quantbalance.calibration.device import move_module
from quantbalance.calibration.hooks import BlockHooks
from quantbalance.calibration.memory import release_free_memory
from quantbalance.errors import CheckpointError

__all__ = [
    "BlockHooks",
    "InMemory",
    "SafetensorsShards",
    "TensorSource",
    "drop",
    "materialize",
    "offload_hooks",
    "on_meta",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class TensorSource(Protocol):
    """Where a model's float tensors come from (by ``state_dict`` name)."""

    def keys(self) -> Iterable[str]:
        """Every tensor name the source holds."""
        ...

    def load(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The named tensors, on the host (the caller moves them).

        Args:
            names: tensor names, each one of :meth:`keys`.

        Returns:
            name -> tensor.
        """
        ...


class _NamedTensors:
    """What both sources share: ``entries`` maps every tensor name to where its data is (a file,
    or the tensor itself); :meth:`load` refuses unknown names, then ``_read`` fetches the rest."""

    where: str  # what to call the source in messages
    entries: Mapping[str, Any]

    def keys(self) -> Iterable[str]:
        """Every tensor name the source holds."""
        return self.entries.keys()

    def load(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The named tensors, on the host (the caller moves them).

        Args:
            names: tensor names, each one of :meth:`keys`.

        Returns:
            name -> tensor.

        Raises:
            CheckpointError: a name the source does not hold.
        """
        missing = [n for n in names if n not in self.entries]
        if missing:
            raise CheckpointError(
                f"{self.where}: the checkpoint has no tensor(s) {missing[:5]} "
                f"({len(self.entries)} tensors stored)"
            )
        return self._read(names)

    def _read(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class SafetensorsShards(_NamedTensors):
    """The safetensors files of a checkpoint folder, read tensor by tensor (memory-mapped).

    Args:
        folder: a folder with ``model.safetensors.index.json`` (its ``weight_map``) or one
            ``model.safetensors``.

    Example:
        >>> import tempfile, safetensors.torch as st
        >>> d = Path(tempfile.mkdtemp())
        >>> st.save_file({"a": torch.ones(2)}, str(d / "model.safetensors"))
        >>> SafetensorsShards(d).load(["a"])["a"].tolist()
        [1.0, 1.0]
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.where = str(self.folder)
        index = self.folder / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            self.entries = {str(k): self.folder / str(v) for k, v in weight_map.items()}
        elif (self.folder / SINGLE_NAME).is_file():
            with safe_open(str(self.folder / SINGLE_NAME), framework="pt") as f:
                self.entries = dict.fromkeys(f.keys(), self.folder / SINGLE_NAME)
        else:
            raise CheckpointError(
                f"{self.folder}: neither {INDEX_NAME} nor {SINGLE_NAME}; give a Hugging Face "
                "checkpoint folder saved in safetensors (save_pretrained(safe_serialization=True))"
            )

    def _read(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Copy the named tensors out of their files (each file mapped only during the call)."""
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.entries[n], []).append(n)
        out = {}
        for path, group in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for n in group:
                    out[n] = f.get_tensor(n).clone()  # own memory: the map closes on exit
        return out


class InMemory(_NamedTensors):
    """Every tensor of another source, read once into host memory.

    Args:
        source: the source to read.
    """

    def __init__(self, source: TensorSource) -> None:
        self.entries = source.load(list(source.keys()))
        self.where = f"{getattr(source, 'where', type(source).__name__)} (in memory)"

    def _read(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The named tensors (shared, not copied)."""
        return {n: self.entries[n] for n in names}


def on_meta(module: nn.Module) -> list[str]:
    """Names of ``module``'s parameters and buffers that have no data (``meta`` device).

    Args:
        module: any module.

    Returns:
        Local names, tied tensors once.
    """
    named = [*module.named_parameters(), *module.named_buffers()]
    return [n for n, t in named if t.is_meta]


def materialize(
    module: nn.Module, prefix: str, source: TensorSource, device: torch.device | str
) -> int:
    """Give ``module``'s ``meta`` parameters and buffers their data from ``source``, on ``device``.

    Tensors that already have data (e.g. non-persistent buffers computed at construction) are
    moved to ``device``. Tensors keep the dtype of the module (the source is cast if needed).

    Args:
        module: a module of the model.
        prefix: its ``state_dict`` prefix in the model (``"model.layers.3."``; ``""`` for root).
        source: where the data is.
        device: where to put it.

    Returns:
        The number of bytes loaded.
    """
    from accelerate.utils import set_module_tensor_to_device  # deferred: the [offload] extra

    names = on_meta(module)
    tensors = source.load([prefix + n for n in names])
    nbytes = 0
    for n in names:
        t = tensors.pop(prefix + n)
        dtype = _tensor(module, n).dtype
        set_module_tensor_to_device(module, n, device, value=t, dtype=dtype)
        nbytes += t.numel() * t.element_size()
    for n, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.device != torch.device(device):
            set_module_tensor_to_device(module, n, device, value=t)
    return nbytes


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    return getattr(sub, leaf)  # type: ignore[no-any-return]


def drop(module: nn.Module) -> None:
    """Release ``module``'s data: every parameter, buffer and quantized weight goes to ``meta``.

    Args:
        module: the module (modified in place; shapes and dtypes stay).
    """
    move_module(module, "meta")


def offload_hooks(
    source: TensorSource,
    device: torch.device | str,
    finalize: Callable[[str, nn.Module], None] | None = None,
) -> BlockHooks:
    """Hooks that load each block from ``source`` onto ``device`` and drop it when done.

    Args:
        source: where the block weights are (``state_dict`` names).
        device: where each block runs.
        finalize: called with the finished block before it is dropped (e.g. write it out).

    Returns:
        The :class:`BlockHooks`.
    """

    def enter(name: str, block: nn.Module) -> None:
        materialize(block, name + "." if name else "", source, device)

    def leave(name: str, block: nn.Module) -> None:
        if finalize is not None:
            finalize(name, block)
        drop(block)
        release_free_memory()  # the block's freed pages back to the OS (glibc keeps them)

    return BlockHooks(enter, leave)
