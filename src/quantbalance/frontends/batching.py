"""Samples to model batches: a seeded calibration / evaluation split that never overlaps, and the
encoder (tokenizer, image processor, tensor stacking) that turns samples into model inputs."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from quantbalance.errors import ConfigError
from quantbalance.frontends.data import Samples

log = logging.getLogger(__name__)

Encoder = Callable[[list[Any]], Any]


@dataclass
class DataSplit:
    """Calibration and evaluation samples, disjoint by position and by content.

    Attributes:
        calib: calibration samples (never evaluated on).
        eval: evaluation samples (the search and held-out splits are slices of these).
        report: what was done: counts, seed, and how many evaluation samples were dropped
            because the same content is in the calibration set.
    """

    calib: Samples
    eval: Samples
    report: dict[str, Any] = field(default_factory=dict)


def split_samples(
    samples: Samples,
    n_calib: int | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> DataSplit:
    """Shuffle (seeded), cap, and split samples into calibration and evaluation sets.

    Evaluation samples whose content equals a calibration sample (a repeated line, a copied
    image) are dropped, so the two sets never overlap; the count is in the report.

    Args:
        samples: what :func:`~quantbalance.frontends.data.read_samples` returned.
        n_calib: calibration samples (default: a quarter of the data, 1..128).
        num_samples: use at most this many samples in all (after shuffling).
        seed: shuffle seed (``random.Random(seed)``).

    Returns:
        The :class:`DataSplit`.

    Raises:
        ConfigError: too few samples for both sets (at least 1 calibration and 2 evaluation).
    """
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    if num_samples is not None:
        if num_samples < 3:
            raise ConfigError(f"--num-samples {num_samples}: need at least 3 (calib + 2 eval)")
        order = order[:num_samples]
    n = len(order)
    n_cal = n_calib if n_calib is not None else min(128, max(1, n // 4))
    if not 1 <= n_cal <= n - 2:
        raise ConfigError(
            f"{samples.source}: {n} samples, n_calib={n_cal}; need 1 <= n_calib <= {n - 2} so "
            "that at least 2 remain for evaluation (search + held out)"
        )
    cal_idx, ev_idx = order[:n_cal], order[n_cal:]
    seen = {digest_sample(samples.items[i]) for i in cal_idx}
    kept = [i for i in ev_idx if digest_sample(samples.items[i]) not in seen]
    dropped = len(ev_idx) - len(kept)
    if dropped:
        log.warning("%s: %d evaluation samples equal a calibration sample; dropped", samples.source,
                    dropped)  # fmt: skip
    if len(kept) < 2:
        raise ConfigError(
            f"{samples.source}: only {len(kept)} evaluation samples differ from the calibration "
            "samples; give more (distinct) data"
        )
    report = {"source": samples.source, "seed": seed, "n_calib": n_cal, "n_eval": len(kept),
              "eval_dropped_as_duplicates": dropped, "overlap": 0}  # fmt: skip
    return DataSplit(_take(samples, cal_idx), _take(samples, kept), report)


def _take(samples: Samples, idx: Sequence[int]) -> Samples:
    labels = [samples.labels[i] for i in idx] if samples.labels is not None else None
    return replace(samples, items=[samples.items[i] for i in idx], labels=labels)


def digest_sample(item: Any) -> str:
    """A content hash of one sample (text, tensor, dict, PIL image).

    Args:
        item: the sample.

    Returns:
        Hex SHA-256.
    """
    h = hashlib.sha256()
    _feed(h, item)
    return h.hexdigest()


def _feed(h: Any, item: Any) -> None:
    if isinstance(item, str):
        h.update(b"s" + item.encode())
    elif isinstance(item, torch.Tensor):
        t = item.detach().cpu().contiguous()
        h.update(f"t{t.dtype}{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(item, dict):
        for k in sorted(item):
            h.update(str(k).encode())
            _feed(h, item[k])
    elif isinstance(item, tuple | list):
        for v in item:
            _feed(h, v)
    elif hasattr(item, "tobytes") and hasattr(item, "size"):  # a PIL image
        h.update(f"i{item.mode}{item.size}".encode() + item.tobytes())
    else:
        h.update(repr(item).encode())


def make_encoder(
    kind: str,
    processor: Any = None,
    seq_len: int = 128,
    transform_fn: Callable[[Any], Any] | None = None,
) -> Encoder:
    """How a list of samples becomes one model batch.

    Args:
        kind: the samples' kind (``text``, ``image``, ``tensor``, ``batch``).
        processor: a tokenizer (text) or image processor (images), or None.
        seq_len: tokens per text (truncation; batches pad to their longest text).
        transform_fn: per-sample transform applied before stacking (images, tensors).

    Returns:
        ``encode(items) -> batch``.

    Raises:
        ConfigError: text without a tokenizer.
    """
    if kind == "text":
        if processor is None or not callable(processor):
            raise ConfigError("text data needs a tokenizer: load the model with --hf / "
                              "from_pretrained, or pass processor=")  # fmt: skip
        if getattr(processor, "pad_token", "") is None:
            processor.pad_token = processor.eos_token  # decoder LMs ship without one
        return lambda items: dict(processor(items, padding=True, truncation=True,
                                            max_length=seq_len, return_tensors="pt"))  # fmt: skip
    if kind == "image" and processor is not None and transform_fn is None:
        return lambda items: {"pixel_values": processor(images=items, return_tensors="pt")[
            "pixel_values"]}  # fmt: skip
    if kind == "batch":
        return lambda items: items[0] if len(items) == 1 else _stack([_as_tensor(b) for b in items])
    tf = transform_fn or (_image_tensor if kind == "image" else _as_tensor)
    return lambda items: _stack([tf(x) for x in items])


def _image_tensor(image: Any) -> torch.Tensor:
    """A PIL image as a (C, H, W) float tensor in [0, 1] (torchvision's ``to_tensor``)."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _as_tensor(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _as_tensor(v) for k, v in x.items()}
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _stack(xs: list[Any]) -> Any:
    if isinstance(xs[0], dict):
        return {k: _stack([x[k] for x in xs]) for k in xs[0]}
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise ConfigError(
            f"samples of different shapes {sorted(shapes)[:3]} cannot form one batch; pass a "
            "transform_fn that resizes them (or --batch-size 1)"
        )
    return torch.stack(xs)


def batches(samples: Samples, encode: Encoder, batch_size: int) -> list[Any]:
    """Encode samples in consecutive chunks of ``batch_size`` (batches stay whole for ``batch``).

    Args:
        samples: the samples.
        encode: from :func:`make_encoder`.
        batch_size: samples per batch (ignored for ``batch`` items: one batch each).

    Returns:
        The batches.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give at least 1")
    step = 1 if samples.kind == "batch" else batch_size
    return [encode(samples.items[i : i + step]) for i in range(0, len(samples), step)]


def label_batches(samples: Samples, batch_size: int, mapping: dict[str, int] | None) -> list[Any]:
    """The labels of :func:`batches`' chunks, as int64 tensors.

    Args:
        samples: samples with labels.
        batch_size: as for :func:`batches`.
        mapping: label name -> class index (e.g. the model's ``config.label2id``) for text labels.

    Returns:
        One (N,) tensor per batch.

    Raises:
        ConfigError: a label is neither an integer nor a name in ``mapping``.
    """
    assert samples.labels is not None
    if samples.kind == "batch":
        return [torch.as_tensor(t).reshape(-1).long() for t in samples.labels]
    ids = [_label_id(v, mapping) for v in samples.labels]
    return [torch.tensor(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


def _label_id(value: Any, mapping: dict[str, int] | None) -> int:
    if mapping and str(value) in mapping:
        return int(mapping[str(value)])
    try:
        return int(value)
    except (TypeError, ValueError):
        known = f"; the model's labels: {', '.join(mapping)}" if mapping else ""
        raise ConfigError(f"label {value!r} is not a class index{known}") from None
