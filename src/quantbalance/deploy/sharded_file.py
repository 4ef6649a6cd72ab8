"""Reading a sharded checkpoint folder (``deploy.sharded``): its index, checksums and tensors.

Apart from the writer so that :mod:`quantbalance.deploy.checkpoint` can recognise and read such
a folder without importing the writer (which builds on the checkpoint module's helpers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from quantbalance.errors import CheckpointError

INDEX = "qb_index.json"
FORMAT = "quantbalance-sharded"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _digest(meta: dict[str, str], files: dict[str, str], weight_map: dict[str, str]) -> str:
    rest = {k: v for k, v in meta.items() if k != "checksum"}
    blob = json.dumps({"metadata": rest, "files": files, "weight_map": weight_map}, sort_keys=True)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :class:`ShardedWriter`.

    Args:
        path: a path.

    Returns:
        True if it is a folder with a ``qb_index.json``.
    """
    return Path(path).is_dir() and (Path(path) / INDEX).is_file()


def read_sharded(folder: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read and verify a sharded checkpoint: index, checksums, tensors.

    Args:
        folder: the checkpoint folder.

    Returns:
        ``(metadata, tensors)``, as :func:`quantbalance.deploy.checkpoint.read` returns them.

    Raises:
        CheckpointError: naming what is wrong (missing index or file, altered content).
    """
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder}: unreadable {INDEX} ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{folder}/{INDEX}: not a {FORMAT} index")
    meta, files, weight_map = index["metadata"], index["files"], index["weight_map"]
    if _digest(meta, files, weight_map) != meta.get("checksum"):
        raise CheckpointError(f"{folder}/{INDEX}: checksum mismatch; the index was altered")
    tensors: dict[str, torch.Tensor] = {}
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: part {name} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch; the file was altered or truncated")
        tensors.update(load_file(str(path)))
    if set(tensors) != set(weight_map):
        raise CheckpointError(f"{folder}: the parts' tensors do not match the index's weight_map")
    return meta, tensors
