"""The real benchmark tasks (shared/BENCH_TASKS.md): ``minilm``, ``fashion`` and ``smollm``.

Loaders import their heavy dependencies (transformers, gensim, ...) only when called.
"""

from __future__ import annotations

from typing import Any

from quantbalance.errors import ConfigError
from quantbalance.tasks.base import Task

TASKS = ("minilm", "fashion", "smollm")

__all__ = ["TASKS", "Task", "load"]


def load(name: str, **kwargs: Any) -> Task:
    """Load a benchmark task by name.

    Args:
        name: one of ``TASKS`` (``minilm``, ``fashion``, ``smollm``).
        **kwargs: passed to the task's loader (e.g. ``n_eval=64`` for ``minilm``).

    Returns:
        The task: float model, calibration data, example inputs and evaluation function.

    Raises:
        ConfigError: ``name`` is not a known task.
        AssetMissingError: the task's model or data is not installed.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "minilm":
        from quantbalance.tasks.minilm import load_minilm

        return load_minilm(**kwargs)
    if key == "smollm":
        from quantbalance.tasks.smollm import load_smollm

        return load_smollm(**kwargs)
    if key == "fashion":
        from quantbalance.tasks.fashion import load_fashion

        return load_fashion(**kwargs)
    raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
