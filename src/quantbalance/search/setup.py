"""The search's setup: splits, cache, executor, folded model, candidates, float reference."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from quantbalance.algorithms.base import options_in_force
from quantbalance.errors import ConfigError
from quantbalance.lowering import plan_target
from quantbalance.plan import PRESETS, LayerSpec, Plan, preset
from quantbalance.search.cache import Cache, data_hash, default_cache_dir, model_hash
from quantbalance.search.config import SearchConfig
from quantbalance.search.costs import with_algorithm
from quantbalance.search.evaluator import PlanEvaluator, Source, as_holdout, as_source
from quantbalance.search.executor import Executor, MemoryCache, SerialExecutor, make_executor
from quantbalance.search.result import Budget
from quantbalance.search.sensitivity import latency_candidates, layer_options
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
        config: the search's options (every phase reads its own from here).
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
    config: SearchConfig

    @classmethod
    def build(
        cls, model: nn.Module, source: Any, budget: Budget, holdout: Any, config: SearchConfig
    ) -> SearchSetup:
        """Resolve the splits, cache, executor and candidates; measure the float reference.

        Args:
            model: the float model (not modified).
            source: the search split: a ``Task`` or ``(calib_data, eval_fn)``.
            budget: the budget.
            holdout: the held-out split (a ``Task`` or an eval function) or None.
            config: the search's options.

        Returns:
            The setup.
        """
        c = config
        algorithm, candidates, presets, target = c.algorithm, c.candidates, c.presets, c.target
        src = as_source(source, c.metric or budget.metric, c.higher_is_better, c.eval_id)
        budget = budget.model_copy(update={"metric": src.metric})
        hold = as_holdout(holdout, src)
        run = make_executor(c.executor)
        cache = (Cache if isinstance(run, SerialExecutor) else MemoryCache)(
            default_cache_dir() if c.cache_dir == "default" else c.cache_dir
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
            candidates = target_candidates(target, c.objective)
        if candidates is None and c.objective == "latency":
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
                   reference, preset_plans, algorithm, keys, config)  # fmt: skip
