"""The real benchmark tasks (shared/BENCH_TASKS.md): ``minilm``, ``fashion`` and ``smollm``.

Loaders import their heavy dependencies (transformers, gensim, ...) only when called.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.frontends.task import build_task
from quantbalance.tasks import fashion, minilm, smollm
from quantbalance.tasks.base import Task

TASKS = ("minilm", "fashion", "smollm")
#: Task name -> its loader (each module imports its heavy dependencies only when called).
_LOADERS: dict[str, Callable[..., Task]] = {
    "minilm": minilm.load_minilm, "fashion": fashion.load_fashion, "smollm": smollm.load_smollm,
}  # fmt: skip
#: Task name -> ``build_evaluate(task, eval_slice)`` (``hf:`` tasks use minilm's).
_EVALUATORS: dict[str, Callable[..., Callable[[nn.Module], dict[str, float]]]] = {
    "minilm": minilm.build_evaluate,
    "fashion": fashion.build_evaluate,
    "smollm": smollm.build_evaluate,
}
#: Sizes of the real tasks for a benchmark: metrics on a slice, batches of the timed sizes.
BENCH_TASKS: dict[str, dict[str, Any]] = {
    "minilm": {"n_eval": 64, "n_calib": 100},
    "fashion": {"n_test": 1024, "eval_batch": 64},
}

__all__ = [
    "BENCH_TASKS",
    "TASKS",
    "Task",
    "build_evaluate",
    "from_model",
    "load",
    "load_for_bench",
]


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
    loader = _LOADERS.get(key)
    if loader is None:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    task = loader(**kwargs)
    task.eval_slicer = functools.partial(build_evaluate, task)
    return task


def from_model(model: Any, data: Any, metric: str | None = None, **kwargs: Any) -> Task:
    """A Task from your own model and data, like the bundled ones (``quantize``, ``compare``,
    ``search``, ``bench`` and the report take it).

    Args:
        model: a float ``nn.Module`` or ``qb.from_pretrained(...)``'s result.
        data: a file/folder path (text, JSONL/CSV, image folder, .npy, .safetensors, datasets),
            a list of texts, or an iterable of batches (``DataLoader``).
        metric: the protected metric (default by model type: ``perplexity`` for causal LMs,
            ``top1_agreement`` for classifiers, ``accuracy`` with labels, ``cosine`` for
            embeddings).
        **kwargs: see ``quantbalance.frontends.task.build_task`` (``labels``, ``column``,
            ``num_samples``, ``seq_len``, ``batch_size``, ``seed``, ``input_fn``,
            ``transform_fn``, ...).

    Returns:
        The Task, with disjoint calibration and evaluation samples.

    Example:
        >>> import quantbalance as qb  # doctest: +SKIP
        >>> llama = qb.from_pretrained("my-llama")  # doctest: +SKIP
        >>> task = qb.tasks.from_model(llama, "texts.txt")  # doctest: +SKIP
    """
    return build_task(model, data, metric=metric, **kwargs)


def load_for_bench(name: str) -> Task:
    """Load a real task at the sizes a benchmark uses (``BENCH_TASKS``).

    Args:
        name: ``minilm`` or ``fashion``.

    Returns:
        The task.

    Raises:
        ConfigError: ``name`` has no benchmark sizes.
    """
    if name not in BENCH_TASKS:
        raise ConfigError(f"unknown task {name!r}; accepted: {', '.join(BENCH_TASKS)}")
    return load(name, **BENCH_TASKS[name])


def build_evaluate(task: Task, eval_slice: slice) -> Callable[[nn.Module], dict[str, float]]:
    """A benchmark task's own evaluation function, on another slice of its evaluation data.

    Held-out splits use it: the metric is built exactly as the loader builds it (same float
    reference, tokenization, batching), only on different samples. What the slice counts:

    * ``minilm`` (and ``--hf`` encoders): fidelity sentences, within ``0..500``;
    * ``fashion``: test images, within ``0..10000``;
    * ``smollm``: windows of the corpus token stream, not overlapping the calibration tokens.

    Args:
        task: a task from :func:`load`.
        eval_slice: ``slice(start, stop)``.

    Returns:
        ``evaluate(model) -> dict[str, float]``.

    Raises:
        ConfigError: the task has no sliced evaluation, or the slice is out of range.
    """
    base = task.name.split("[")[0]
    build = _EVALUATORS.get("minilm" if base.startswith("hf:") else base)
    if build is None:
        raise ConfigError(
            f"task {task.name!r} has no sliced evaluation; accepted: {', '.join(TASKS)}"
        )
    return build(task, eval_slice)
