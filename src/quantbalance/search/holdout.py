"""Disjoint search / held-out splits of the benchmark tasks' evaluation data.

The search measures on one part of a task's evaluation data and the budget is judged on the
other part, which the search never saw. ``split_task`` builds both as ``Task`` objects sharing
one float model and one calibration set (plus, optionally, a smaller prefix of the search split
for the many single-layer measurements):

* ``minilm``: the 500 fidelity sentences; search = the first 250, held out = the last 250;
* ``fashion``: the 10,000 test images; search = the first 5,000, held out = the last 5,000.

(``n_eval`` shrinks both, keeping them at opposite ends so they never overlap.)

Metrics are the tasks' own (``tasks.minilm``'s fidelity metrics; accuracy and agreement in
percent for ``fashion``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.tasks import Task
from quantbalance.tasks import load as load_task


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
        name: ``minilm`` or ``fashion``.
        n_sensitivity: size of the sensitivity prefix (sentences / images), or None.
        n_eval: size of each of the search and held-out splits (default: half of the task's
            evaluation data each).
        **kwargs: passed to the task loader (e.g. ``n_calib``).

    Returns:
        The :class:`Split`.

    Raises:
        ConfigError: the task has no split defined here.
    """
    if name == "minilm":
        return _split_minilm(n_sensitivity, n_eval or 250, **kwargs)
    if name == "fashion":
        return _split_fashion(n_sensitivity, n_eval or 5000, **kwargs)
    raise ConfigError(f"no held-out split is defined for task {name!r}; accepted: minilm, fashion")


def _split_minilm(n_sens: int | None, half: int, **kwargs: Any) -> Split:
    from transformers import AutoTokenizer

    from quantbalance.tasks import minilm as M

    if not 1 <= half <= M.N_EVAL_MAX // 2:
        raise ConfigError(f"minilm: n_eval={half}; accepted 1..{M.N_EVAL_MAX // 2}")
    task = load_task("minilm", n_eval=half, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(task.info["model_path"]))
    seq_len = task.info["seq_len"]
    sentences = M.minilm_sentences()

    def sub(lo: int, hi: int, split: str) -> Task:
        enc = M.tokenize_sentences(tokenizer, sentences[lo:hi], seq_len)
        batches = [{k: v[i : i + 32] for k, v in enc.items()} for i in range(0, hi - lo, 32)]
        # the task module's own metric builder, so both splits measure exactly the same thing
        fn = M._build_evaluate(task.model, batches)
        info = task.info | {"split": split, "sentences": [lo, hi]}
        return replace(task, name=f"minilm[{split}]", evaluate_fn=fn, info=info, _reference=None)

    search = replace(task, info=task.info | {"split": "search", "sentences": [0, half]})
    sens = sub(0, n_sens, "sensitivity") if n_sens else None
    return Split(search, sub(M.N_EVAL_MAX - half, M.N_EVAL_MAX, "holdout"), sens)


def _fashion_eval(reference: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    frozen = copy.deepcopy(reference).eval()
    cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def predict(model: nn.Module) -> torch.Tensor:
        out = [model(x[i : i + 1000]) for i in range(0, len(x), 1000)]
        return torch.cat([o if isinstance(o, torch.Tensor) else o[0] for o in out]).argmax(1)

    def evaluate(model: nn.Module) -> dict[str, float]:
        """Accuracy and agreement with the float model, in percent."""
        if "float" not in cache:
            cache["float"] = predict(frozen)
        p = predict(model)
        return {
            "accuracy": 100.0 * float((p == y).float().mean()),
            "agreement": 100.0 * float((p == cache["float"]).float().mean()),
        }

    return evaluate


def _split_fashion(n_sens: int | None, half: int, **kwargs: Any) -> Split:
    from quantbalance.tasks.fashion_data import load_fashion_mnist

    if not 1 <= half <= 5000:
        raise ConfigError(f"fashion: n_eval={half}; accepted 1..5000")
    task = load_task("fashion", n_test=half, **kwargs)
    x, y = load_fashion_mnist("test", kwargs.get("data_dir"))

    def sub(lo: int, hi: int, split: str) -> Task:
        fn = _fashion_eval(task.model, x[lo:hi].clone(), y[lo:hi].clone())
        info = task.info | {"split": split, "images": [lo, hi]}
        return replace(task, name=f"fashion[{split}]", evaluate_fn=fn, info=info, _reference=None)

    search = replace(task, info=task.info | {"split": "search", "images": [0, half]})
    sens = sub(0, n_sens, "sensitivity") if n_sens else None
    return Split(search, sub(len(x) - half, len(x), "holdout"), sens)
