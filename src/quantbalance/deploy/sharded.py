"""Sharded checkpoints written part by part: one safetensors file per block plus an index.

A model quantized block by block with its blocks offloaded (``qb.quantize(hf_path, ...,
save_to=...)``) never holds every quantized layer at once, so it cannot be saved with
:func:`quantbalance.deploy.checkpoint.save` at the end. :class:`ShardedWriter` saves each part
(a finished block, then the modules outside the blocks) as soon as it is done, in the same
tensor naming and per-layer metadata as a single-file checkpoint. The folder:

* ``part-00000.safetensors`` ...: the tensors of one part each, under their full names;
* ``qb_index.json``: ``{"format": "quantbalance-sharded", "metadata": {...}, "weight_map":
  {tensor: file}, "files": {file: "sha256:<hex>"}}``. ``metadata`` holds exactly the entries
  of a single-file checkpoint's ``__metadata__`` (``plan``, ``layers``, ``aliases``, ``info``,
  versions); its ``checksum`` is ``sha256:<hex>`` of the UTF-8 JSON (sorted keys) of the other
  metadata entries, ``files`` and ``weight_map``. Every file's SHA-256 is checked on reading.

What this needs from :mod:`quantbalance.deploy.checkpoint` (its private helpers, the contract):
``_collect(module) -> (tensors, metadata)`` for any sub-module (names relative to it, metadata
with JSON ``layers`` and ``aliases``), :func:`~quantbalance.deploy.rebuild.rebuild`, and
``FORMAT_VERSION`` / the ``quantbalance.format`` key. Reading (index, checksums) is in
:mod:`quantbalance.deploy.sharded_file`, which the single-file loader also uses. The folder is
written under a temporary name and renamed when complete, so a reader never sees a partial
checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from quantbalance.deploy.checkpoint import _collect
from quantbalance.deploy.checkpoint_file import FORMAT_KEY, FORMAT_VERSION
from quantbalance.deploy.rebuild import rebuild
from quantbalance.deploy.sharded_file import (
    FORMAT,
    INDEX,
    _digest,
    _sha256,
    is_sharded,
    read_sharded,
)
from quantbalance.errors import CheckpointError
from quantbalance.version import __version__

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "INDEX", "ShardedWriter", "is_sharded", "load_sharded", "read_sharded"]


class ShardedWriter:
    """Write a quantized model part by part (see the module docstring).

    Args:
        folder: the checkpoint folder to create (replaced only when :meth:`close` succeeds).

    Example:
        >>> import quantbalance as qb, tempfile
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> q = qb.quantize(net, "int8-weight", progress=False)
        >>> w = ShardedWriter(tempfile.mkdtemp() + "/ckpt")
        >>> w.add("", q)
        >>> out = w.close(q.qb_plan, q.qb_info)
        >>> torch.equal(load_sharded(out, net)(torch.ones(1, 4)), q(torch.ones(1, 4)))
        True
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.tmp = self.folder.with_name(f".{self.folder.name}.partial-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.layers: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self.weight_map: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.nbytes = 0

    def add(self, prefix: str, module: nn.Module) -> None:
        """Write ``module``'s tensors (quantized layers and float state) as one file.

        Args:
            prefix: the module's name in the model (``"model.layers.3"``; ``""`` for the root).
            module: the finished part (its quantized layers installed).
        """
        tensors, meta = _collect(module)
        at = prefix + "." if prefix else ""
        named = {at + k: v for k, v in tensors.items()}
        clash = sorted(set(named) & set(self.weight_map))
        if clash:
            raise CheckpointError(f"part {prefix!r} writes tensors already written: {clash[:5]}")
        self.layers.update({at + k: v for k, v in json.loads(meta["layers"]).items()})
        self.aliases.update({at + k: at + v for k, v in json.loads(meta["aliases"]).items()})
        name = f"part-{len(self.files):05d}.safetensors"
        path = self.tmp / name
        save_file(named, str(path))
        self.files[name] = _sha256(path)
        self.weight_map.update(dict.fromkeys(named, name))
        self.nbytes += sum(t.numel() * t.element_size() for t in named.values())
        log.debug("wrote %s: %d tensors for %r", name, len(named), prefix or "<root>")

    def close(
        self, plan: Any, info: Any, source: str | None = None, modules: dict[str, str] | None = None
    ) -> Path:
        """Write the index and move the folder into place.

        Args:
            plan: the Plan applied.
            info: the ``QuantizationInfo`` (layers, kept float, algorithm log).
            source: optional task name (as in :func:`~quantbalance.deploy.checkpoint.save`).
            modules: every module's class (``deploy.checkpoint.module_types`` of the quantized
                model); stored so that loading refuses a skeleton whose modules differ.

        Returns:
            The checkpoint folder.
        """

        meta = {
            FORMAT_KEY: str(FORMAT_VERSION),
            "quantbalance.version": __version__,
            "torch.version": torch.__version__,
            "plan": plan.to_json() if plan is not None else "null",
            "layers": json.dumps(self.layers, sort_keys=True),
            "aliases": json.dumps(self.aliases, sort_keys=True),
            "info": json.dumps(info.to_dict() if info else {}, sort_keys=True, default=str),
        }
        if source is not None:
            meta["source"] = source
        if modules is not None:
            meta["modules"] = json.dumps(modules, sort_keys=True)
        meta["checksum"] = _digest(meta, self.files, self.weight_map)
        index = {"format": FORMAT, "metadata": meta, "weight_map": self.weight_map,
                 "files": self.files}  # fmt: skip
        (self.tmp / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
        if self.folder.exists():
            old = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
            self.folder.rename(old)
            self.tmp.rename(self.folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.folder)
        log.info("saved %d parts (%d tensor bytes) to %s", len(self.files), self.nbytes,
                 self.folder)  # fmt: skip
        return self.folder

    def abort(self) -> None:
        """Remove the partial folder (the target is left as it was)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def load_sharded(folder: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a quantized model from a sharded checkpoint on a float skeleton.

    Args:
        folder: the checkpoint folder.
        model: the float skeleton (deep-copied, never modified).

    Returns:
        The quantized model, as :func:`quantbalance.deploy.checkpoint.load` returns it.
    """
    meta, tensors = read_sharded(folder)
    return rebuild(model, meta, tensors, str(folder))
