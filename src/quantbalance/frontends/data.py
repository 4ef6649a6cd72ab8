"""Data in the forms users keep it, read into one list of samples (and labels).

=====================================  =============================================================
source                                 samples
=====================================  =============================================================
``file.txt``                           one text per non-empty line
``file.jsonl`` / ``.csv`` / ``.tsv``   the text of ``column`` (default ``text``) per row
folder of images                       PIL images; with class subfolders, labels = folder names
``datasets`` folder / ``.parquet``     ``column`` of a ``datasets`` dataset (extra ``datasets``)
``file.npy``                           one tensor per row of the array (first axis)
``file.safetensors``                   one tensor, or one dict per row of tensors sharing axis 0
``DataLoader`` / iterable of batches   each batch, through ``input_fn`` (default: ``inputs`` of
                                       ``(inputs, labels)`` pairs; the labels are kept)
=====================================  =============================================================

Nothing here unpickles: ``.npy`` loads with ``allow_pickle=False``, tensors come from
safetensors. Reading never modifies the source.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file

from quantbalance.errors import AssetMissingError, ConfigError

SampleKind = Literal["text", "image", "tensor", "batch"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEXT_COLUMNS = ("text", "sentence", "content", "prompt")


@dataclass
class Samples:
    """Samples read from one source.

    Attributes:
        items: the samples (texts, PIL images, tensors, dicts of tensors, or whole batches).
        kind: ``text``, ``image``, ``tensor`` (one sample each) or ``batch`` (already batched).
        labels: one label per item (None when the source has none); for ``batch`` items, one
            tensor of labels per batch.
        source: where they came from, for reports.
        classes: label names, when labels are class indices (image folders).
    """

    items: list[Any]
    kind: SampleKind
    labels: list[Any] | None = None
    source: str = ""
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def read_samples(
    data: Any,
    column: str | None = None,
    labels: str | None = None,
    input_fn: Callable[[Any], Any] | None = None,
) -> Samples:
    """Read samples from a path or an iterable of batches (see the module table).

    Args:
        data: a path (file or folder), a ``Samples``, a list of texts, or an iterable of
            batches (``DataLoader``).
        column: the text column of JSONL/CSV/``datasets`` data (default the first of
            ``text``, ``sentence``, ``content``, ``prompt`` present).
        labels: the label column (JSONL/CSV/``datasets``), or for ``.safetensors`` the tensor
            name holding labels (default ``labels`` when present).
        input_fn: for batches: ``input_fn(batch) -> model inputs`` (NNCF's ``transform_fn``).

    Returns:
        The :class:`Samples`.

    Raises:
        ConfigError: unknown format, missing column, empty data.
        AssetMissingError: the path does not exist, or an optional package is missing.
    """
    if isinstance(data, Samples):
        return data
    if isinstance(data, str | Path):
        out = _read_path(Path(data), column, labels)
    elif isinstance(data, list) and data and all(isinstance(x, str) for x in data):
        out = Samples(list(data), "text", source="list of texts")
    elif isinstance(data, Iterable):
        out = read_batches(data, input_fn)
    else:
        raise ConfigError(
            f"data={type(data).__name__}; give a file/folder path, a list of texts or an "
            "iterable of batches (DataLoader)"
        )
    if not out.items:
        raise ConfigError(f"{out.source or data}: no samples")
    return out


def read_batches(batches: Iterable[Any], input_fn: Callable[[Any], Any] | None = None) -> Samples:
    """Batches of a ``DataLoader`` (or any iterable); labels split off ``(inputs, labels)`` pairs.

    Args:
        batches: the iterable.
        input_fn: ``input_fn(batch) -> model inputs``; default: ``batch[0]`` of a 2-tuple
            ``(inputs, labels)`` (the labels kept), else the batch as is.

    Returns:
        ``Samples`` of kind ``batch``: one item per batch, labels (when found) one tensor per batch.
    """
    items, labels = [], []
    for batch in batches:
        if input_fn is not None:
            items.append(input_fn(batch))
        elif isinstance(batch, tuple | list) and len(batch) == 2:
            items.append(batch[0])
            labels.append(torch.as_tensor(batch[1]).reshape(-1))
        else:
            items.append(batch)
    return Samples(items, "batch", labels or None, source="batches")


def _read_path(path: Path, column: str | None, labels: str | None) -> Samples:
    if not path.exists():
        raise AssetMissingError(f"--data {path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _read_datasets(path, column, labels, from_disk=True)
        return read_image_folder(path)
    if suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return Samples([ln for ln in lines if ln], "text", source=str(path))
    if suffix in (".jsonl", ".csv", ".tsv"):
        rows = _read_rows(path, suffix)
        return _text_rows(rows, column, labels, str(path))
    if suffix == ".parquet":
        return _read_datasets(path, column, labels, from_disk=False)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ConfigError(f"{path}: not a plain numeric .npy array ({e})") from None
        return Samples(list(torch.from_numpy(arr)), "tensor", source=str(path))
    if suffix == ".safetensors":
        return _read_safetensors(path, labels)
    raise ConfigError(
        f"--data {path}: unknown format {suffix or '(no suffix)'}; accepted: .txt, .jsonl, .csv, "
        ".tsv, .parquet, .npy, .safetensors, an image folder or a saved datasets folder"
    )


def _read_rows(path: Path, suffix: str) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{i}: not JSON ({e.msg})") from None
        return rows
    return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))


def _text_rows(
    rows: list[dict[str, Any]], column: str | None, labels: str | None, where: str
) -> Samples:
    if not rows:
        raise ConfigError(f"{where}: no rows")
    keys = list(rows[0])
    col = column or next((c for c in TEXT_COLUMNS if c in keys), None)
    for name, what in ((col, "--column"), (labels, "--labels")):
        if name is not None and name not in keys:
            raise ConfigError(f"{where}: no column {name!r} ({what}); columns: {', '.join(keys)}")
    if col is None:
        raise ConfigError(f"{where}: which column holds the text? pass --column, one of {keys}")
    texts = [str(r.get(col) or "") for r in rows]
    keep = [i for i, t in enumerate(texts) if t.strip()]
    lab = [rows[i][labels] for i in keep] if labels else None
    return Samples([texts[i] for i in keep], "text", lab, source=where)


def _read_datasets(path: Path, column: str | None, labels: str | None, from_disk: bool) -> Samples:
    try:
        import datasets  # deferred: datasets is an optional extra
    except ImportError:
        raise AssetMissingError(
            f"{path}: reading a Hugging Face datasets folder or parquet file needs the PyPI "
            "package 'datasets'; install it with: pip install 'quantbalance[datasets]'"
        ) from None
    if from_disk:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
    else:
        ds = datasets.Dataset.from_parquet(str(path))
    rows = [dict(zip(ds.column_names, values, strict=True)) for values in zip(
        *(ds[c] for c in ds.column_names), strict=True)]  # fmt: skip
    return _text_rows(rows, column, labels, str(path))


def read_image_folder(path: Path) -> Samples:
    """Images under a folder; with one subfolder per class, labels are the class indices.

    Args:
        path: the folder (``cat/1.png``, ``dog/2.png`` … or flat ``1.png``, ``2.png`` …).

    Returns:
        ``Samples`` of RGB (or grayscale ``L``) PIL images, sorted by path.

    Raises:
        ConfigError: no images found.
    """
    from PIL import Image  # deferred: Pillow takes ~0.1 s to import; only image folders need it

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(
            f"--data {path}: a folder without images ({', '.join(IMAGE_SUFFIXES)}) and not a "
            "saved datasets folder"
        )
    classes = sorted({p.parent.name for p in files if p.parent != path})
    nested = all(p.parent != path for p in files) and classes
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("L" if im.mode in ("L", "I;16", "1") else "RGB"))
    labels = [classes.index(f.parent.name) for f in files] if nested else None
    return Samples(
        images, "image", labels, source=str(path), classes=list(classes) if nested else []
    )


def _read_safetensors(path: Path, labels: str | None) -> Samples:
    tensors = load_file(str(path))
    label_key = labels or ("labels" if "labels" in tensors else None)
    if label_key is not None and label_key not in tensors:
        raise ConfigError(f"{path}: no tensor {label_key!r}; tensors: {', '.join(tensors)}")
    lab = tensors.pop(label_key) if label_key else None
    if not tensors:
        raise ConfigError(f"{path}: no input tensors besides the labels")
    n = {int(t.shape[0]) for t in tensors.values()}
    if len(n) != 1:
        raise ConfigError(f"{path}: tensors disagree on the sample axis (sizes {sorted(n)})")
    rows = n.pop()
    if len(tensors) == 1:
        items: list[Any] = list(next(iter(tensors.values())))
    else:
        items = [{k: v[i] for k, v in tensors.items()} for i in range(rows)]
    return Samples(items, "tensor", lab.reshape(-1).tolist() if lab is not None else None,
                   source=str(path))  # fmt: skip
