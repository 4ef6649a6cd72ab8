"""Where the CLI's model comes from: a task name, ``module:factory``, a Hugging Face folder or
cached id (by architecture), or an ONNX file; with ``--data``, a Task built from the user's data."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.evaluate import model_nbytes
from quantbalance.frontends.hf import from_pretrained
from quantbalance.frontends.onnx_in import from_onnx
from quantbalance.tasks import Task, from_model
from quantbalance.tasks import load as load_task


@dataclass
class DataOptions:
    """The CLI's data options (``--data`` and friends), passed to ``tasks.from_model``.

    Attributes:
        data: a text/JSONL/CSV/parquet/.npy/.safetensors file, an image folder or a saved
            ``datasets`` folder.
        column: the text column of JSONL/CSV/``datasets`` data.
        labels: the label column (``--labels``); ``"folders"`` for an image folder's classes.
        metric: the protected metric (None: by model type).
        num_samples: use at most this many samples.
        n_calib: calibration samples.
        seq_len: tokens per text.
        batch_size: samples per batch.
        seed: shuffle seed.
        hf_task: force the Hugging Face model kind.
    """

    data: str | None = None
    column: str | None = None
    labels: str | None = None
    metric: str | None = None
    num_samples: int | None = None
    n_calib: int | None = None
    seq_len: int = 128
    batch_size: int = 8
    seed: int = 0
    hf_task: str | None = None

    def build(self, model: Any, name: str | None = None) -> Task:
        """``tasks.from_model(model, self.data, ...)``.

        Args:
            model: an ``nn.Module`` or ``HFModel``.
            name: the task's name.

        Returns:
            The Task.
        """
        if not self.data:
            raise ConfigError(
                "--hf/--onnx need --data FILE (a .txt with one sample a line, .jsonl/.csv with "
                "--column, an image folder, .npy or .safetensors) to calibrate and evaluate on"
            )
        labels: str | bool | None = self.labels
        if labels in ("folders", "true", "yes"):
            labels = True
        return from_model(
            model, self.data, metric=self.metric, labels=labels, column=self.column,
            num_samples=self.num_samples, n_calib=self.n_calib, seq_len=self.seq_len,
            batch_size=self.batch_size, seed=self.seed, name=name,
        )  # fmt: skip


def load_source(
    task: str | None = None,
    model: str | None = None,
    hf: str | None = None,
    onnx: str | None = None,
    data: DataOptions | None = None,
) -> Task:
    """Build a Task from one of ``task``, ``model`` (``module:factory``), ``hf`` or ``onnx``.

    A factory may return a ``Task``, a ``(model, calib_data)`` or ``(model, calib_data,
    eval_fn)`` tuple, or a bare ``nn.Module`` (with ``--data``: a Task on that data; without,
    only weight statistics can be measured).

    Args:
        task: a benchmark task name.
        model: ``package.module:function`` returning one of the forms above.
        hf: a local Hugging Face model folder or a hub id in the local cache.
        onnx: an ONNX file (converted to torch).
        data: the data options (required with ``hf`` and ``onnx``).

    Returns:
        A Task.
    """
    given = [x for x in (task, model, hf, onnx) if x]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of --task, --model module:factory, --hf PATH_OR_ID or --onnx PATH"
        )
    data = data or DataOptions()
    if task:
        if data.data:
            raise ConfigError("--data goes with --hf, --onnx or --model, not a bundled --task")
        return load_task(task)
    if hf:
        return data.build(from_pretrained(hf, task=data.hf_task))
    if onnx:
        return data.build(from_onnx(onnx), name=f"onnx:{Path(onnx).name}")
    assert model is not None
    return _from_factory(model, data)


def _from_factory(spec: str, data: DataOptions | None = None) -> Task:
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise ConfigError(f"--model {spec!r}: expected 'module:factory'")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--model {spec!r}: cannot import ({e})") from None
    made: Any = fn()
    if isinstance(made, Task):
        return made
    if isinstance(made, nn.Module):
        if data is not None and data.data:
            return data.build(made.eval(), name=spec)
        return Task(spec, made.eval(), [], None, _no_eval, primary_metric="none")
    if isinstance(made, tuple) and len(made) in (2, 3) and isinstance(made[0], nn.Module):
        eval_fn = made[2] if len(made) == 3 else _no_eval
        calib = list(made[1]) if made[1] is not None else []
        example = calib[0] if calib else None
        return Task(spec, made[0].eval(), calib, example, eval_fn, primary_metric="none")
    raise ConfigError(
        f"--model {spec!r} returned {type(made).__name__}; expected a Task, an nn.Module, or "
        "(model, calib_data[, eval_fn])"
    )


def _no_eval(model: nn.Module) -> dict[str, float]:
    return {"model_bytes": float(model_nbytes(model))}
