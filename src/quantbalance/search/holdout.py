"""Disjoint search / held-out splits of a task's evaluation data.

The search measures on one part of a task's evaluation data and the budget is judged on the
other part, which the search never saw. :func:`split_eval` builds both as ``Task`` objects
sharing one float model and one calibration set (plus, optionally, a smaller prefix of the search
split for the many single-layer measurements). Each split's metric comes from the task's own
``eval_slicer`` (the same metric on other samples), so nothing here knows which task it is: the
bundled tasks and ``tasks.from_model`` tasks alike carry their slicer. A caller with a separate
held-out evaluate function can pass it to ``search(holdout=...)`` directly instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantbalance.errors import ConfigError
from quantbalance.evaluate.task import Task


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


def split_eval(
    task: Task, n: int, hold_start: int, n_sensitivity: int | None = None, unit: str = "samples"
) -> Split:
    """Search = the task's evaluation samples ``0..n``; held out = ``hold_start..hold_start+n``.

    Args:
        task: a task whose ``eval_slicer`` builds its metric on any slice of its evaluation
            samples (its ``evaluate_fn`` is taken to score ``0..n`` when ``n_eval_samples`` is
            None or ``n``).
        n: samples in each of the search and held-out splits.
        hold_start: first held-out sample (``>= n``, so the splits never overlap).
        n_sensitivity: size of the sensitivity prefix of the search split, or None.
        unit: what a sample is, for the report (``sentences``, ``images``, ``windows``).

    Returns:
        The :class:`Split`.

    Raises:
        ConfigError: the task has no ``eval_slicer``, the splits would overlap, or a size is out
            of range.
    """
    if task.eval_slicer is None:
        raise ConfigError(
            f"{task.name}: no eval_slicer, so no held-out split; give the task one (tasks "
            "from quantbalance.tasks.from_model have it) or pass search(holdout=eval_fn)"
        )
    if n_sensitivity is not None and not 1 <= n_sensitivity <= n:
        raise ConfigError(
            f"{task.name}: n_sensitivity={n_sensitivity}; accepted 1..{n} (the search split)"
        )
    if hold_start < n:
        raise ConfigError(
            f"{task.name}: held-out {unit} from {hold_start} overlap the search split"
        )
    total = task.n_eval_samples
    if total is not None and hold_start + n > total:
        raise ConfigError(
            f"{task.name}: held-out {unit} {hold_start}..{hold_start + n} exceed the "
            f"{total} evaluation {unit} available"
        )
    slicer = task.eval_slicer

    def sub(lo: int, hi: int, split: str) -> Task:
        info = task.info | {"split": split, unit: [lo, hi]}
        return replace(
            task,
            name=f"{task.name}[{split}]",
            evaluate_fn=slicer(slice(lo, hi)),
            info=info,
            _reference=None,
        )

    # evaluate_fn scores 0..n already unless the task says it holds more samples than that.
    same = task.n_eval_samples in (None, n)
    fn = task.evaluate_fn if same else slicer(slice(0, n))
    info = task.info | {"split": "search", unit: [0, n]}
    search = replace(task, evaluate_fn=fn, info=info, _reference=task._reference if same else None)
    sens = sub(0, n_sensitivity, "sensitivity") if n_sensitivity else None
    return Split(search, sub(hold_start, hold_start + n, "holdout"), sens)
