"""Where the CLI's model comes from: a task name, ``module:factory``, or a local HF folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.tasks import Task
from quantbalance.tasks import load as load_task


def load_source(task: str | None = None, model: str | None = None, hf: str | None = None) -> Task:
    """Build a Task from exactly one of ``task``, ``model`` (``module:factory``) or ``hf``.

    A factory may return a ``Task``, a ``(model, calib_data)`` or ``(model, calib_data,
    eval_fn)`` tuple, or a bare ``nn.Module`` (then only weight statistics can be measured).

    Args:
        task: a benchmark task name.
        model: ``package.module:function`` returning one of the forms above.
        hf: path of a local Hugging Face model folder (a BERT-style encoder).

    Returns:
        A Task.
    """
    given = [x for x in (task, model, hf) if x]
    if len(given) != 1:
        raise ConfigError("give exactly one of --task, --model module:factory or --hf PATH")
    if task:
        return load_task(task)
    if hf:
        from quantbalance.tasks.minilm import load_minilm

        path = Path(hf)
        if not (path / "config.json").is_file():
            raise ConfigError(f"--hf {hf}: no config.json there; give a local model folder")
        return load_minilm(model_path=path)
    assert model is not None
    return _from_factory(model)


def _from_factory(spec: str) -> Task:
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
    from quantbalance.evaluate import model_nbytes

    return {"model_bytes": float(model_nbytes(model))}
