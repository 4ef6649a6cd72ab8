"""Disjoint search / held-out splits of the benchmark tasks' evaluation data.

The search measures on one part of a task's evaluation data and the budget is judged on the
other part, which the search never saw. ``split_task`` builds both as ``Task`` objects sharing
one float model and one calibration set (plus, optionally, a smaller prefix of the search split
for the many single-layer measurements):

* ``minilm``: the 500 fidelity sentences; search = the first 250, held out = the last 250;
* ``fashion``: the 10,000 test images; search = the first 5,000, held out = the last 5,000;
* ``smollm``: windows of 512 tokens of the corpus; search = the first 4, then the calibration
  windows, held out = the 4 windows after those.

(``n_eval`` sets the size of each split, keeping them apart so they never overlap.)

Every split's metric is built by the task module itself (``tasks.build_evaluate``), so the
search, held-out and sensitivity splits measure exactly the same thing on different samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from quantbalance.errors import ConfigError
from quantbalance.tasks import Task, build_evaluate
from quantbalance.tasks import load as load_task

SPLITS = ("minilm", "fashion", "smollm")


@dataclass
class Split:
    """A task split three ways.

    Attributes:
        search: the split the search evaluates Plans on.
        holdout: the held-out split the budget is judged on.
        sensitivity: a prefix of ``search`` for single-layer measurements (or None).
    """

    search: Task
    holdout: Task
    sensitivity: Task | None = None


def split_task(
    name: str, n_sensitivity: int | None = None, n_eval: int | None = None, **kwargs: Any
) -> Split:
    """Load a task with disjoint search and held-out evaluation splits.

    Args:
        name: ``minilm``, ``fashion`` or ``smollm``.
        n_sensitivity: size of the sensitivity prefix (sentences / images / windows), or None.
        n_eval: size of each of the search and held-out splits (default: 250 sentences, 5,000
            images, 4 windows).
        **kwargs: passed to the task loader (e.g. ``n_calib``).

    Returns:
        The :class:`Split`.

    Raises:
        ConfigError: the task has no split defined here, or a size is out of range.
    """
    if name == "minilm":
        from quantbalance.tasks.minilm import N_EVAL_MAX

        half = n_eval or 250
        if not 1 <= half <= N_EVAL_MAX // 2:
            raise ConfigError(f"minilm: n_eval={half}; accepted 1..{N_EVAL_MAX // 2}")
        task = load_task("minilm", n_eval=half, **kwargs)
        return _split(task, half, n_sensitivity, N_EVAL_MAX - half, "sentences")
    if name == "fashion":
        half = n_eval or 5000
        if not 1 <= half <= 5000:
            raise ConfigError(f"fashion: n_eval={half}; accepted 1..5000")
        task = load_task("fashion", n_test=half, **kwargs)
        return _split(task, half, n_sensitivity, 10000 - half, "images")
    if name == "smollm":
        n = n_eval or 4
        if n < 2:
            raise ConfigError(f"smollm: n_eval={n}; accepted at least 2 windows")
        task = load_task("smollm", n_windows=n, **kwargs)
        window = int(task.info["window"])
        first = -(-int(task.info["calib_tokens"][1]) // window)  # first window after calibration
        if (first + n) * window > int(task.info["corpus_tokens"]):
            raise ConfigError(
                f"smollm: n_eval={n} windows: the corpus has {task.info['corpus_tokens']} tokens, "
                "too few for a held-out split of that size after the calibration windows"
            )
        return _split(task, n, n_sensitivity, first, "windows")
    raise ConfigError(
        f"no held-out split is defined for task {name!r}; accepted: {', '.join(SPLITS)}"
    )


def _split(task: Task, n: int, n_sens: int | None, hold_start: int, unit: str) -> Split:
    """Search = the task (its first ``n`` samples), held out = ``n`` from ``hold_start``."""
    if n_sens is not None and not 1 <= n_sens <= n:
        raise ConfigError(
            f"{task.name}: n_sensitivity={n_sens}; accepted 1..{n} (the search split)"
        )
    if hold_start < n:
        raise ConfigError(
            f"{task.name}: held-out {unit} from {hold_start} overlap the search split"
        )

    def sub(lo: int, hi: int, split: str) -> Task:
        fn = build_evaluate(task, slice(lo, hi))
        info = task.info | {"split": split, unit: [lo, hi]}
        return replace(
            task, name=f"{task.name}[{split}]", evaluate_fn=fn, info=info, _reference=None
        )

    search = replace(task, info=task.info | {"split": "search", unit: [0, n]})
    sens = sub(0, n_sens, "sensitivity") if n_sens else None
    return Split(search, sub(hold_start, hold_start + n, "holdout"), sens)
