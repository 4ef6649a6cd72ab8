"""The ``fashion`` benchmark task: FashionNet on Fashion-MNIST (see shared/BENCH_TASKS.md, T2).

The float checkpoint ``assets/fashion_cnn.safetensors`` is made by ``scripts/train_fashion.py``
and committed; it is read with ``safetensors`` only (never pickle).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from quantbalance.errors import AssetMissingError, CheckpointError, ConfigError
from quantbalance.tasks.base import Task
from quantbalance.tasks.fashion_data import fashion_root, load_fashion_mnist
from quantbalance.tasks.fashion_model import FashionNet

log = logging.getLogger(__name__)

CHECKPOINT = Path(__file__).resolve().parent / "assets" / "fashion_cnn.safetensors"
EXAMPLE_BATCH = 64


def load_fashion_model(checkpoint: str | os.PathLike[str] | None = None) -> FashionNet:
    """Build FashionNet and load the committed float weights, in eval mode.

    Args:
        checkpoint: a safetensors file written by ``scripts/train_fashion.py``; ``None`` means
            the committed ``assets/fashion_cnn.safetensors``.

    Returns:
        The float model in eval mode.

    Raises:
        AssetMissingError: the checkpoint file does not exist.
        CheckpointError: the file is not a readable FashionNet checkpoint.
    """
    path = Path(checkpoint) if checkpoint is not None else CHECKPOINT
    if not path.is_file():
        raise AssetMissingError(
            f"FashionNet checkpoint {path} not found. Create it with "
            "`python scripts/train_fashion.py` (about 4 minutes on 2 cores; it writes "
            f"{CHECKPOINT})."
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"FashionNet checkpoint {path} is unreadable ({exc}); recreate it with "
            "`python scripts/train_fashion.py`."
        ) from exc
    try:
        width = int(meta.get("width", "24"))
        num_classes = int(meta.get("num_classes", "10"))
    except ValueError as exc:
        raise CheckpointError(
            f"FashionNet checkpoint {path} has bad metadata {meta!r}: width and num_classes "
            "must be integers."
        ) from exc
    model = FashionNet(width=width, num_classes=num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"FashionNet checkpoint {path} does not match FashionNet(width={width}): {exc}"
        ) from exc
    model.eval()
    return model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` on the model's device; accept a tensor or a tuple output."""
    out = model(x)
    if not isinstance(out, torch.Tensor):
        out = out[0]
    return out


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Top-1 predictions of ``model`` over ``images`` (eval mode; training mode restored).

    Args:
        model: a classifier returning ``(N, 10)`` logits.
        images: ``(N, 1, 28, 28)`` images.
        batch: evaluation batch size.

    Returns:
        ``(N,)`` int64 predicted classes, on CPU.
    """
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        preds = [
            _logits(model, images[i : i + batch].to(device)).argmax(1).cpu()
            for i in range(0, len(images), batch)
        ]
    finally:
        model.train(was_training)
    return torch.cat(preds)


def _build_evaluate(
    reference: nn.Module, x: torch.Tensor, y: torch.Tensor, eval_batch: int
) -> Callable[[nn.Module], dict[str, float]]:
    reference_model = copy.deepcopy(reference)  # private copy: immune to in-place quantization
    cache: dict[str, torch.Tensor] = {}

    def evaluate(candidate: nn.Module) -> dict[str, float]:
        """Accuracy and top-1 agreement with the float model, in percent."""
        if "float" not in cache:
            cache["float"] = _predict(reference_model, x, eval_batch)
        preds = _predict(candidate, x, eval_batch)
        return {
            "accuracy": 100.0 * float((preds == y).float().mean()),
            "agreement": 100.0 * float((preds == cache["float"]).float().mean()),
        }

    evaluate.qb_fingerprint_ignore = ("cache",)  # type: ignore[attr-defined] - a memo
    return evaluate


def build_evaluate(task: Task, eval_slice: slice) -> Callable[[nn.Module], dict[str, float]]:
    """The ``fashion`` metrics on another slice of the 10,000 test images.

    The same metric builder as :func:`load_fashion` (same batch size and float reference), on
    ``test_images[eval_slice]``: e.g. a held-out half the search never sees.

    Args:
        task: a task built by :func:`load_fashion` (its float model is the reference).
        eval_slice: which test images, within ``0..10000`` (step 1).

    Returns:
        ``evaluate(model) -> {"accuracy", "agreement"}`` (percent).

    Raises:
        ConfigError: the slice is empty, has a step, or leaves ``0..10000``.
    """
    x, y = load_fashion_mnist("test", task.info.get("data_dir"))
    n = len(x)
    if not isinstance(eval_slice, slice) or eval_slice.step not in (None, 1):
        raise ConfigError(f"fashion: eval_slice={eval_slice!r}; give a slice(start, stop)")
    lo, hi = eval_slice.start or 0, n if eval_slice.stop is None else eval_slice.stop
    if not 0 <= lo < hi <= n:
        raise ConfigError(f"fashion: eval_slice={eval_slice!r} must select images in 0..{n}")
    batch = int(task.info.get("eval_batch", 1000))
    return _build_evaluate(task.model, x[lo:hi].clone(), y[lo:hi].clone(), batch)


def load_fashion(
    n_calib: int = 512,
    calib_batch: int = 64,
    n_test: int | None = None,
    eval_batch: int = 1000,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Task:
    """Build the ``fashion`` task.

    Args:
        n_calib: number of training images used for calibration (a fixed, seed-0 subset).
        calib_batch: images per calibration batch (the last batch may be smaller).
        n_test: evaluate on the first ``n_test`` test images only (``None``: all 10,000).
        eval_batch: images per evaluation batch.
        checkpoint: the float checkpoint (``None``: the committed one).
        data_dir: folder of the idx files (``None``: ``$QB_FASHION_DIR``, else the Debian folder).

    Returns:
        A ``Task`` whose batches are image tensors ``(B, 1, 28, 28)`` and whose ``evaluate``
        returns ``{"accuracy": percent, "agreement": percent of test images where the model's
        top-1 class equals the float model's}``.

    Raises:
        ConfigError: a size argument is out of range.
        AssetMissingError: the checkpoint or the data is missing.
        CheckpointError: the checkpoint is unreadable.
    """
    for name, value, low in (
        ("n_calib", n_calib, 1),
        ("calib_batch", calib_batch, 1),
        ("eval_batch", eval_batch, 1),
    ):
        if value < low:
            raise ConfigError(f"load_fashion: {name}={value} is invalid; use an integer >= {low}.")
    if n_test is not None and not 1 <= n_test <= 10000:
        raise ConfigError(f"load_fashion: n_test={n_test} is invalid; use 1..10000 or None.")
    if n_calib > 60000:
        raise ConfigError(f"load_fashion: n_calib={n_calib} exceeds the 60000 training images.")

    model = load_fashion_model(checkpoint)

    x_train, _ = load_fashion_mnist("train", data_dir)
    gen = torch.Generator().manual_seed(0)
    calib_idx = torch.randperm(len(x_train), generator=gen)[:n_calib]
    calib_images = x_train[calib_idx].clone()
    del x_train
    calib_data = list(calib_images.split(calib_batch))

    x_test, y_test = load_fashion_mnist("test", data_dir)
    example_inputs = x_test[:EXAMPLE_BATCH].clone()
    if n_test is not None:
        x_test, y_test = x_test[:n_test].clone(), y_test[:n_test].clone()

    evaluate = _build_evaluate(model, x_test, y_test, eval_batch)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "fashion task: %d parameters, %d calibration images, %d test images",
        n_params,
        n_calib,
        len(x_test),
    )
    return Task(
        name="fashion",
        model=model,
        calib_data=calib_data,
        example_inputs=example_inputs,
        evaluate_fn=evaluate,
        primary_metric="accuracy",
        higher_is_better=True,
        info={
            "parameters": n_params,
            "checkpoint": str(Path(checkpoint) if checkpoint is not None else CHECKPOINT),
            "data_dir": str(fashion_root(data_dir)),
            "n_calib": n_calib,
            "n_test": len(x_test),
            "eval_batch": eval_batch,
            "source": "Debian dataset-fashion-mnist; model trained by scripts/train_fashion.py",
        },
    )
