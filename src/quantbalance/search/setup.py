"""The search's setup: splits, cache, executor, folded model, candidates, float reference."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from quantbalance.algorithms.base import options_in_force
from quantbalance.errors import ConfigError
from quantbalance.lowering import plan_target
from quantbalance.plan import PRESETS, LayerSpec, Plan, preset
from quantbalance.search.cache import Cache, data_hash, default_cache_dir, model_hash
from quantbalance.search.costs import with_algorithm
from quantbalance.search.evaluator import PlanEvaluator, Source, as_holdout, as_source
from quantbalance.search.executor import Executor, MemoryCache, SerialExecutor, make_executor
from quantbalance.search.result import Budget
from quantbalance.search.sensitivity import Candidates, latency_candidates, layer_options
from quantbalance.search.targets import target_candidates, target_presets
from quantbalance.transform import fold_batchnorm, quantizable_layers, split_attention


@dataclass
class SearchSetup:
    """What every phase shares: the split, the folded model, the candidates, the evaluator.

    Attributes:
        budget: the budget, its metric filled in.
        src: the search split; holdout: the held-out split or None.
        executor: where independent evaluations run; cache: the measurement cache.
        model_key: the float model's hash; base: a folded, eval-mode copy of the model.
        names: the quantizable layers; options: layer -> candidate name -> spec.
        evaluator: evaluates Plans on the splits; reference: the float metrics (search split).
        preset_plans: the uniform presets placed on the axes; algorithm: the weight algorithm.
        keys: the cache identity of the model, data, algorithm and options.
    """

    budget: Budget
    src: Source
    holdout: Source | None
    executor: Executor
    cache: Cache
    model_key: str
    base: nn.Module
    names: list[str]
    options: dict[str, dict[str, LayerSpec | None]]
    evaluator: PlanEvaluator
    reference: dict[str, float]
    preset_plans: dict[str, Plan]
    algorithm: str
    keys: dict[str, Any]

    @classmethod
    def build(
        cls,
        model: nn.Module,
        task_or: Any,
        budget: Budget,
        candidates: Candidates,
        algorithm: str,
        holdout: Any,
        *,
        presets: Sequence[str] | None,
        metric: str | None,
        higher_is_better: bool | None,
        eval_id: str | None,
        cache_dir: str | os.PathLike[str] | None,
        executor: str | Executor | None,
        target: str | None,
        objective: Literal["bytes", "latency"],
    ) -> SearchSetup:
        """Resolve the splits, cache, executor and candidates; measure the float reference.

        Args:
            model: the float model (not modified).
            task_or, budget, candidates, algorithm, holdout, presets, metric,
                higher_is_better, eval_id, cache_dir, executor, target, objective: as
                ``qb.search`` takes them.

        Returns:
            The setup.
        """
        src = as_source(task_or, metric or budget.metric, higher_is_better, eval_id)
        budget = budget.model_copy(update={"metric": src.metric})
        hold = as_holdout(holdout, src)
        run = make_executor(executor)
        cache = (Cache if isinstance(run, SerialExecutor) else MemoryCache)(
            default_cache_dir() if cache_dir == "default" else cache_dir
        )
        mkey = model_hash(model)
        base = copy.deepcopy(model).eval()
        fold_batchnorm(base)
        split_attention(base)
        names = list(quantizable_layers(base))
        if not names:
            raise ConfigError(
                f"{type(model).__name__} has no quantizable layers (Linear, Conv1d/2d, "
                "Embedding): nothing to search"
            )
        if candidates is None and target is not None:
            candidates = target_candidates(target, objective)
        if candidates is None and objective == "latency":
            candidates = lambda _name, mod: latency_candidates(mod)  # noqa: E731
        options = layer_options(base, names, candidates, algorithm)
        if presets is None and target not in (None, "torch"):  # the target's uniform types
            preset_plans = {
                n: with_algorithm(p, algorithm) for n, p in target_presets(options).items()
            }
        else:
            preset_names = list(presets) if presets is not None else list(PRESETS)
            preset_plans = {n: with_algorithm(preset(n), algorithm) for n in preset_names}
        keys = {
            "model": mkey,
            "data": data_hash(src.calib_data),
            "algorithm": algorithm,
            "options": options_in_force(),
            "target": plan_target(),
        }
        evaluator = PlanEvaluator(model, src, hold, cache, keys)
        reference = evaluator.reference()  # before any cache lookup: measurements key on it
        if hold is not None:
            evaluator.reference("holdout")
        return cls(budget, src, hold, run, cache, mkey, base, names, options, evaluator,
                   reference, preset_plans, algorithm, keys)  # fmt: skip
