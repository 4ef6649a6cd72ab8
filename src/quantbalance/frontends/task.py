"""A Task from a user's model and data: calibration batches, evaluation by fidelity (or labels).

``quantbalance.tasks.from_model`` (and the CLI's ``--hf/--onnx/--model`` with ``--data``) build
here the same ``Task`` the bundled tasks are, with an ``eval_slicer`` so the search can hold out
half of the evaluation samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quantbalance.calibration.batch import call_model
from quantbalance.errors import ConfigError
from quantbalance.evaluate.fidelity import (
    DIRECTION,
    default_metric,
    fidelity_evaluate,
    metrics_of,
    output_tensor,
)
from quantbalance.evaluate.task import EvalFn, Task
from quantbalance.frontends.batching import (
    batches,
    digest_sample,
    label_batches,
    make_encoder,
    split_samples,
)
from quantbalance.frontends.data import Samples, read_samples
from quantbalance.frontends.hf import FAMILY_OF_KIND, HFModel

log = logging.getLogger(__name__)


def build_task(
    model: nn.Module | HFModel,
    data: Any,
    *,
    metric: str | None = None,
    labels: str | bool | None = None,
    column: str | None = None,
    family: str | None = None,
    processor: Any = None,
    num_samples: int | None = None,
    n_calib: int | None = None,
    seq_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    input_fn: Callable[[Any], Any] | None = None,
    transform_fn: Callable[[Any], Any] | None = None,
    name: str | None = None,
) -> Task:
    """Build a Task from a model and data in any form :func:`~quantbalance.frontends.data.
    read_samples` reads.

    Args:
        model: a float ``nn.Module`` or an :class:`~quantbalance.frontends.hf.HFModel`
            (which brings its kind and tokenizer / image processor).
        data: a path, a list of texts, ``Samples``, or an iterable of batches.
        metric: the metric the task protects (default by output family, see
            ``evaluate.fidelity``); must be one the family returns.
        labels: the label column / tensor name; True to use the labels the data carries
            (image class folders, ``(inputs, labels)`` batches). Adds ``accuracy`` and ``f1``.
        column: the text column (JSONL/CSV/``datasets``).
        family: ``lm``, ``logits`` or ``embedding`` (default from the HF kind, or from the
            float model's output on the first batch).
        processor: tokenizer / image processor (default the HFModel's).
        num_samples: use at most this many samples.
        n_calib: calibration samples (default a quarter, at most 128).
        seq_len: tokens per text.
        batch_size: samples per batch.
        seed: shuffle seed.
        input_fn: for iterables of batches: ``input_fn(batch) -> model inputs``.
        transform_fn: per-sample transform (images, tensors) before stacking.
        name: the task's name (default from the model / data).

    Returns:
        The Task (``n_eval_samples`` and ``eval_slicer`` set; ``info['data']`` reports the split).

    Raises:
        ConfigError: bad data, labels, or a metric the family does not compute.
    """
    hf = model if isinstance(model, HFModel) else None
    module = hf.model if hf is not None else model
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model={type(model).__name__}; give an nn.Module or an HFModel")
    module.eval()
    label_col = labels if isinstance(labels, str) else None
    samples = read_samples(data, column, label_col, input_fn)
    if labels and samples.labels is None:
        raise ConfigError(f"{samples.source}: labels requested but the data carries none")
    if not labels:
        samples.labels = None
    split = split_samples(samples, n_calib, num_samples, seed)
    encode = make_encoder(samples.kind, processor or (hf.processor if hf else None), seq_len,
                          transform_fn)  # fmt: skip
    calib = batches(split.calib, encode, batch_size)
    fam = family or (FAMILY_OF_KIND[hf.kind] if hf else _guess_family(module, calib[0]))
    has_labels = split.eval.labels is not None
    metric = metric or default_metric(fam, has_labels)
    if metric not in metrics_of(fam, has_labels):
        raise ConfigError(
            f"metric {metric!r} is not computed for {fam} outputs"
            f"{' with labels' if has_labels else ''}; accepted: "
            f"{', '.join(metrics_of(fam, has_labels))}"
        )
    mapping = _label2id(module)

    def slicer(s: slice) -> EvalFn:
        part = Samples(split.eval.items[s], split.eval.kind,
                       split.eval.labels[s] if has_labels else None, split.eval.source)  # fmt: skip
        if len(part) == 0:
            raise ConfigError(f"eval slice {s} is empty (of {len(split.eval)} samples)")
        lab = label_batches(part, batch_size, mapping) if has_labels else None
        return fidelity_evaluate(module, batches(part, encode, batch_size), fam, lab)

    n_eval = len(split.eval)
    info = {
        "family": fam,
        "metrics": list(metrics_of(fam, has_labels)),
        "data": split.report | {"seq_len": seq_len, "batch_size": batch_size},
        "eval_data": _fingerprint(split.eval.items),
        "parameters": sum(p.numel() for p in module.parameters()),
    } | (hf.info if hf else {})
    log.info("data %s: %d calibration, %d evaluation samples", samples.source, len(split.calib),
             n_eval)  # fmt: skip
    return Task(
        name=name or (f"hf:{hf.name}" if hf else type(module).__name__),
        model=module,
        calib_data=calib,
        example_inputs=calib[0],
        evaluate_fn=slicer(slice(0, n_eval)),
        primary_metric=metric,
        higher_is_better=DIRECTION[metric],
        info=info,
        eval_slicer=slicer,
        n_eval_samples=n_eval,
    )


def _guess_family(model: nn.Module, batch: Any) -> str:
    with torch.inference_mode():
        out = output_tensor(call_model(model, batch))
    return "logits" if out.dim() == 2 and out.shape[-1] > 1 else "embedding"


def _label2id(model: nn.Module) -> dict[str, int] | None:
    mapping = getattr(getattr(model, "config", None), "label2id", None)
    return {str(k): int(v) for k, v in mapping.items()} if mapping else None


def _fingerprint(items: list[Any]) -> str:
    h = hashlib.sha256(json.dumps(len(items)).encode())
    for item in items:
        h.update(digest_sample(item).encode())
    return h.hexdigest()[:16]
