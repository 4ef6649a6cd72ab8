"""The bundled tasks' held-out splits: which samples each task's search and held-out halves use.

The split itself is generic (``search.holdout.split_eval``); what is task-specific (how many
samples exist, where the held-out half starts) lives here, above the library:

* ``minilm``: the 500 fidelity sentences; search = the first 250, held out = the last 250;
* ``fashion``: the 10,000 test images; search = the first 5,000, held out = the last 5,000;
* ``smollm``: windows of 512 tokens of the corpus; search = the first 4, then the calibration
  windows, held out = the 4 windows after those.

(``n_eval`` sets the size of each split, keeping them apart so they never overlap.)
"""

from __future__ import annotations

from typing import Any

from quantbalance.errors import ConfigError
from quantbalance.search.holdout import Split, split_eval
from quantbalance.tasks import load as load_task
from quantbalance.tasks.minilm import N_EVAL_MAX

SPLITS = ("minilm", "fashion", "smollm")


def split_task(
    name: str, n_sensitivity: int | None = None, n_eval: int | None = None, **kwargs: Any
) -> Split:
    """Load a bundled task with disjoint search and held-out evaluation splits.

    Args:
        name: ``minilm``, ``fashion`` or ``smollm``.
        n_sensitivity: size of the sensitivity prefix (sentences / images / windows), or None.
        n_eval: size of each of the search and held-out splits (default: 250 sentences, 5,000
            images, 4 windows).
        **kwargs: passed to the task loader (e.g. ``n_calib``, ``model_path``).

    Returns:
        The :class:`~quantbalance.search.holdout.Split`.

    Raises:
        ConfigError: the task has no split defined here, or a size is out of range.
    """
    if name == "minilm":
        half = n_eval or 250
        if not 1 <= half <= N_EVAL_MAX // 2:
            raise ConfigError(f"minilm: n_eval={half}; accepted 1..{N_EVAL_MAX // 2}")
        task = load_task("minilm", n_eval=half, **kwargs)
        return split_eval(task, half, N_EVAL_MAX - half, n_sensitivity, "sentences")
    if name == "fashion":
        half = n_eval or 5000
        if not 1 <= half <= 5000:
            raise ConfigError(f"fashion: n_eval={half}; accepted 1..5000")
        task = load_task("fashion", n_test=half, **kwargs)
        return split_eval(task, half, 10000 - half, n_sensitivity, "images")
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
        return split_eval(task, n, first, n_sensitivity, "windows")
    raise ConfigError(
        f"no held-out split is defined for task {name!r}; accepted: {', '.join(SPLITS)}"
    )
