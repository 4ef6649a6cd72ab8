"""Fashion-MNIST from its four idx files (Debian package ``dataset-fashion-mnist``).

The files are looked up, in order, in the ``root`` argument, the folder named by the environment
variable ``QB_FASHION_DIR``, and the Debian folder ``/usr/share/datasets/fashion-mnist``. Each file
may be gzip-compressed (``*.gz``, as distributed) or already decompressed.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from quantbalance.errors import AssetMissingError, ConfigError

log = logging.getLogger(__name__)

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "QB_FASHION_DIR"

#: Mean and standard deviation of the Fashion-MNIST training pixels (scaled to [0, 1]).
MEAN = 0.2860
STD = 0.3530

#: split -> (images file, labels file, number of samples)
FILES: dict[str, tuple[str, str, int]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

_HOW_TO_GET = (
    "Install them with `apt-get install dataset-fashion-mnist` (files land in "
    f"{DEBIAN_DIR}), or download the four Fashion-MNIST idx files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz, from https://github.com/zalandoresearch/fashion-mnist) "
    f"into a folder and set {ENV_VAR} to that folder."
)


def fashion_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder the Fashion-MNIST files are read from.

    Args:
        root: an explicit folder; ``None`` means ``$QB_FASHION_DIR``, else the Debian folder.

    Returns:
        The folder (it may not exist; ``load_fashion_mnist`` reports that).
    """
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path(DEBIAN_DIR)


def _find(folder: Path, name: str) -> Path | None:
    """Return ``folder/name`` or its decompressed twin (without ``.gz``), whichever exists."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it when it is gzip data; a broken gzip stream is an error."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise AssetMissingError(
            f"Fashion-MNIST file {path} is corrupt (gzip stream unreadable: {exc}). "
            f"Replace it with an intact copy. {_HOW_TO_GET}"
        ) from exc


def _parse_idx(path: Path, magic: int, ndim: int, count: int) -> np.ndarray:
    """Parse and validate one idx file of unsigned bytes.

    Args:
        path: the file.
        magic: the expected magic number (``0x803`` images, ``0x801`` labels).
        ndim: the number of dimensions the header declares.
        count: the expected number of items (first dimension).

    Returns:
        A uint8 array of shape ``(count, *rest)``.
    """
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise AssetMissingError(
            f"Fashion-MNIST file {path} is corrupt: {len(data)} bytes, shorter than its "
            f"{header}-byte idx header. {_HOW_TO_GET}"
        )
    (found_magic,) = struct.unpack(">I", data[:4])
    if found_magic != magic:
        raise AssetMissingError(
            f"Fashion-MNIST file {path} is corrupt or not an idx file: magic number "
            f"0x{found_magic:08x}, expected 0x{magic:08x}. {_HOW_TO_GET}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected_dims = (count, 28, 28) if ndim == 3 else (count,)
    if tuple(dims) != expected_dims:
        raise AssetMissingError(
            f"Fashion-MNIST file {path} declares shape {tuple(dims)}, expected "
            f"{expected_dims}. {_HOW_TO_GET}"
        )
    n_bytes = int(np.prod(dims))
    if len(data) != header + n_bytes:
        raise AssetMissingError(
            f"Fashion-MNIST file {path} is corrupt or truncated: {len(data) - header} data "
            f"bytes after the header, expected {n_bytes}. {_HOW_TO_GET}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(
    split: str, root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST, normalised.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: folder holding the idx files; ``None`` means ``$QB_FASHION_DIR``, else
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``(images, labels)``: float32 images of shape ``(N, 1, 28, 28)`` normalised as
        ``(pixel / 255 - MEAN) / STD`` and int64 labels of shape ``(N,)`` in ``0..9``.

    Raises:
        ConfigError: ``split`` is neither ``"train"`` nor ``"test"``.
        AssetMissingError: a file is missing or corrupt; the message says how to get it.
    """
    if split not in FILES:
        raise ConfigError(f"Fashion-MNIST split {split!r} is unknown; use 'train' or 'test'.")
    folder = fashion_root(root)
    images_name, labels_name, count = FILES[split]
    images_path = _find(folder, images_name)
    labels_path = _find(folder, labels_name)
    missing = [
        name for name, p in ((images_name, images_path), (labels_name, labels_path)) if p is None
    ]
    if missing:
        raise AssetMissingError(
            f"Fashion-MNIST {split} split not found in {folder}: missing {', '.join(missing)}. "
            f"{_HOW_TO_GET}"
        )
    assert images_path is not None and labels_path is not None
    images = _parse_idx(images_path, _IMAGES_MAGIC, 3, count)
    labels = _parse_idx(labels_path, _LABELS_MAGIC, 1, count)
    if int(labels.max()) > 9:
        raise AssetMissingError(
            f"Fashion-MNIST file {labels_path} is corrupt: label {int(labels.max())} is outside "
            f"0..9. {_HOW_TO_GET}"
        )
    log.debug("loaded Fashion-MNIST %s split (%d images) from %s", split, count, folder)
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    x = x.div_(255.0).sub_(MEAN).div_(STD)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
