"""The checkpoint file: header, format version, memory-mapped tensors and checksum.

Layout and checksum are described in ``deploy.checkpoint``; this module reads and verifies a
file (``read``) and computes the checksum ``save`` stores (``checksum``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from quantbalance.errors import CheckpointError

FORMAT_VERSION = 2
FORMAT_KEY = "quantbalance.format"


def read(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint: header, format version, tensors and checksum.

    Only the header is read into memory; the tensors are memory-mapped (safetensors
    ``safe_open``, copy-on-write), so reading never holds the file twice, and the checksum
    streams over the mapped pages.

    Args:
        path: the checkpoint file.

    Returns:
        ``(metadata, tensors)``.

    Raises:
        CheckpointError: naming what is wrong with the file.
    """
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder; give the .safetensors file qb.save wrote")
    meta = _header_metadata(path)
    if FORMAT_KEY not in meta:
        raise CheckpointError(
            f"{path}: a safetensors file without quantbalance metadata (keys: "
            f"{sorted(meta) or 'none'}); it was not written by quantbalance.deploy.save"
        )
    try:
        version = int(meta[FORMAT_KEY])
    except ValueError:
        raise CheckpointError(f"{path}: format {meta[FORMAT_KEY]!r} is not an integer") from None
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} (quantbalance "
            f"{meta.get('quantbalance.version', '?')}) predates quantized weights as module "
            f"state; this quantbalance reads format {FORMAT_VERSION}. Re-save it: load it with "
            "the quantbalance that wrote it, or quantize the model again, then qb.save"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} (quantbalance "
            f"{meta.get('quantbalance.version', '?')}) is newer than this quantbalance reads "
            f"(format <= {FORMAT_VERSION}); upgrade quantbalance"
        )
    try:
        with safe_open(str(path), framework="pt") as f:  # memory-mapped, copy-on-write
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors data ({e})") from None
    got = checksum(tensors, meta)
    if got != meta.get("checksum"):
        raise CheckpointError(
            f"{path}: checksum mismatch (stored {meta.get('checksum')!r}, computed {got!r}); "
            "the file was altered or corrupted after it was written"
        )
    return meta, tensors


def checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """The checkpoint checksum (see the module docstring for the exact byte order).

    Args:
        tensors: name -> tensor as stored.
        meta: the metadata (its ``checksum`` entry is ignored).

    Returns:
        ``"sha256:<hex>"``.
    """
    h = hashlib.sha256()
    rest = {k: v for k, v in meta.items() if k != "checksum"}
    h.update(json.dumps(rest, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # a view: no copy of the data
    return "sha256:" + h.hexdigest()


def _header_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, reading only its header."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.read(8)
            if len(first) < 8:
                raise CheckpointError(
                    f"{where}: {len(first)} bytes, truncated (no safetensors header)"
                )
            (n,) = struct.unpack("<Q", first)
            if 8 + n > size:
                raise CheckpointError(
                    f"{where}: header of {n} bytes does not fit in the file's {size} bytes; the "
                    "file is truncated or not a safetensors file"
                )
            data = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e})") from None
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: unreadable safetensors header ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def canonical(blob: bytes) -> bytes:
    """The same safetensors file with its metadata keys in sorted order.

    safetensors keeps the metadata in a hash map, so two saves of one model list its keys in
    different orders and the files differ. The header is re-serialised (compact JSON, as
    safetensors writes it) with sorted metadata and padded with spaces to its old length, so the
    tensor offsets are unchanged; a header that would not fit is left as it is.

    Args:
        blob: a safetensors file's bytes.

    Returns:
        The bytes, with a canonical header.
    """
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    if meta is not None:
        header = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:
        return blob
    return blob[:8] + text.ljust(n) + blob[8 + n :]
