"""Every option of ``qb.search`` in one validated, frozen config: :class:`SearchConfig`.

``search(model, source, budget, config=SearchConfig(...))`` takes it; keyword arguments to
``search`` are the same fields, laid over ``config``. Plain values are strict (``"8"`` is not
an int, ``1`` is not a bool; lists serve for tuples). Three fields may hold live objects, so
the config allows arbitrary types (checked by ``isinstance``) for them: ``candidates`` (a
function ``(name, module) -> key -> spec``), ``latency_model`` (an engine that times layers)
and ``executor`` (an ``Executor`` instance). They stay in the config rather than beside it:
a search is described by all its options, and one object carries them to the report. They
cannot be written as JSON: :meth:`SearchConfig.record` names them, and a config read back from a
record equals the original only when it held none (:attr:`SearchConfig.is_data`).

>>> SearchConfig(max_evals=4).objective
'bytes'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from torch import nn

from quantbalance.evaluate.guards import SQNR_FLOOR_DB
from quantbalance.formats.config import FrozenConfig
from quantbalance.options import check_algorithm
from quantbalance.plan import LayerSpec
from quantbalance.search.costs import LatencyModel
from quantbalance.search.executor import is_executor
from quantbalance.search.targets import TARGETS

#: The fields whose values may be live objects (recorded by name, not as data).
LIVE = ("candidates", "latency_model", "executor")

SpecList = tuple[LayerSpec | None, ...]
SpecDict = dict[str, LayerSpec | None]


def _known_algorithm(v: str) -> str:
    check_algorithm(v)  # raises naming the accepted steps
    return v


def _known_target(v: str) -> str:
    if v not in TARGETS:
        raise ValueError(f"unknown target {v!r}; accepted: {', '.join(TARGETS)}")
    return v


def _executor_value(v: Any) -> Any:
    if v is None or v in ("serial", "ray") or (not isinstance(v, str) and is_executor(v)):
        return v
    raise ValueError(
        "give 'serial', 'ray' or an executor (an object with map(fn, items, shared) and "
        "workers: search.executor)"
    )


def _measure_count(v: bool | int) -> bool | int:
    if not isinstance(v, bool) and v < 1:
        raise ValueError("give True, False or a number of pairs ≥ 1")
    return v


class SearchConfig(FrozenConfig):
    """How ``qb.search`` searches (every field has the default ``search`` always had).

    Args:
        candidates: per-layer candidates: a list of specs (None = float) for every layer, a
            key -> spec dict, or a function ``(name, module) -> key -> spec`` (default
            ``default_candidates``, plus per-token dynamic W8A8 for Linear layers when
            ``objective="latency"``, or the ``target``'s exact schemes).
        algorithm: weight algorithm for every candidate (``rtn``; ``a+b`` chains steps).
        max_evals: evaluations the verification loop may spend (≥ 1).
        groups: lists of layer names that must take the same candidate (e.g. q/k/v).
        objective: what a drop budget minimises: ``bytes`` or ``latency``.
        front_evals: budget-sweep Plans evaluated for the Pareto front.
        presets: uniform presets placed on the axes (default: all of ``PRESETS``, or the
            ``target``'s uniform types).
        latency_model: the engine that times layers (default ``TorchLatencyModel``).
        cache_dir: cache folder, kept as text (``"default"``: ``$QB_CACHE_DIR`` or
            ``~/.cache``; None: off).
        metric: protected metric (default ``budget.metric`` or the task's primary metric).
        higher_is_better: its direction (``(calib_data, eval_fn)`` sources; tasks know theirs).
        eval_id: extra identity of the eval function for the cache.
        measure: sensitivity measurement mode: True (every pair), False (proxies only) or a
            count of pairs measured for real (see ``qb.sensitivity``).
        progress: progress bars (one log line per phase off a terminal).
        executor: where independent evaluations run: ``"serial"`` (default), ``"ray"``
            (``$QB_RAY_ADDRESS`` or a local Ray) or an ``Executor`` (``search.executor``).
        target: deployment engine whose exact schemes are the candidates (``torch``, ``ort``,
            ``tensorrt``, ``vllm``, ``llama.cpp``); only when ``candidates`` is None.
        sqnr_floor_db: the chosen Plan's layers whose output SQNR is below this (dB), or whose
            output has NaN/inf, are named in the message and in ``info["numerics"]``.
        hardware: the int8 target every Plan is quantized, costed and evaluated for:
            ``auto`` (this machine), ``vnni`` or ``avx2``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    candidates: SpecList | SpecDict | Callable[[str, nn.Module], SpecDict] | None = None
    algorithm: Annotated[StrictStr, AfterValidator(_known_algorithm)] = "rtn"
    max_evals: StrictInt = Field(default=8, ge=1)
    groups: tuple[tuple[StrictStr, ...], ...] | None = None
    objective: Literal["bytes", "latency"] = "bytes"
    front_evals: StrictInt = Field(default=3, ge=0)
    presets: tuple[StrictStr, ...] | None = None
    latency_model: LatencyModel | None = None
    cache_dir: StrictStr | None = "default"
    metric: StrictStr | None = None
    higher_is_better: StrictBool | None = None
    eval_id: StrictStr | None = None
    measure: Annotated[StrictBool | StrictInt, AfterValidator(_measure_count)] = True
    progress: StrictBool = True
    executor: Annotated[Any, BeforeValidator(_executor_value)] = None
    target: Annotated[StrictStr, AfterValidator(_known_target)] | None = None
    sqnr_floor_db: float = Field(default=SQNR_FLOOR_DB, strict=True, allow_inf_nan=False)
    hardware: Literal["auto", "vnni", "avx2"] = "auto"

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidates_kind(cls, v: Any) -> Any:
        if v is None or isinstance(v, list | tuple | dict):
            return v
        if callable(v) and not isinstance(v, nn.Module):  # a module is callable too
            return v
        raise ValueError(
            f"a {type(v).__name__}; give a list of LayerSpec (None = float), a key -> LayerSpec "
            "dict, or a function (name, module) -> key -> LayerSpec"
        )

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _path_text(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @property
    def is_data(self) -> bool:
        """Whether every field is plain data (no function, engine or executor object)."""
        return (
            not callable(self.candidates)
            and self.latency_model is None
            and (self.executor is None or isinstance(self.executor, str))
        )

    def merged(self, overrides: dict[str, Any]) -> SearchConfig:
        """This config with ``overrides`` laid over it, validated again.

        Args:
            overrides: field -> value (``search``'s keyword arguments).

        Returns:
            The new config (this one when ``overrides`` is empty).
        """
        if not overrides:
            return self
        given = {k: getattr(self, k) for k in self.model_fields_set}
        return type(self)(**{**given, **overrides})

    def record(self) -> dict[str, Any]:
        """JSON-ready fields; a live object appears as its description (e.g. ``<fn>``).

        Returns:
            field -> value; ``SearchConfig.model_validate`` of it equals this config when
            :attr:`is_data`.
        """
        out = self.model_dump(mode="json", exclude=set(LIVE))
        out["candidates"] = _describe_candidates(self.candidates)
        out["latency_model"] = _describe(self.latency_model)
        out["executor"] = (
            self.executor if isinstance(self.executor, str) else _describe(self.executor)
        )
        return out


def _describe(obj: Any) -> str | None:
    if obj is None:
        return None
    name = getattr(obj, "name", None)
    return f"<{type(obj).__name__}{f' {name}' if isinstance(name, str) else ''}>"


def _describe_candidates(c: Any) -> Any:
    if c is None:
        return None
    if isinstance(c, dict):
        return {k: s and s.model_dump(mode="json") for k, s in c.items()}
    if isinstance(c, tuple):
        return [s and s.model_dump(mode="json") for s in c]
    return f"<function {getattr(c, '__qualname__', type(c).__name__)}>"
