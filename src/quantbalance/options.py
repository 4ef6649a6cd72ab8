"""Algorithm names and options: validated frozen configs, below the Plan.

Every algorithm step that takes options has one :class:`AlgorithmOptions` class here (typed
fields, ranges, unknown fields rejected, like :class:`~quantbalance.formats.Scheme`). A
``LayerSpec`` checks its ``algorithm`` and ``algorithm_args`` against this module when it is
built, without importing ``quantbalance.algorithms`` (whose registry holds the steps themselves;
a test keeps :data:`BUILTIN_ALGORITHMS` equal to it).

>>> GPTQOptions(damp=0.02).block_size
128
>>> check_algorithm("awq+gptq")
['awq', 'gptq']
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from quantbalance.errors import ConfigError
from quantbalance.formats.config import FrozenConfig

#: The steps ``quantbalance.algorithms`` registers (a test asserts it equals the registry).
BUILTIN_ALGORITHMS: tuple[str, ...] = (
    "adaround", "awq", "bias_correction", "cle", "gptq", "rtn", "smoothquant",
)  # fmt: skip
_REGISTERED: set[str] = set()  # steps registered later (``register_algorithm``)


class AlgorithmOptions(FrozenConfig):
    """Base of every step's options: frozen, strictly typed, unknown fields rejected.

    Strict typing: ``"0.5"`` is not a float and ``1`` is not a bool (integers are accepted where
    a float is expected); lists are accepted where a tuple is expected (JSON has no tuples).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    #: The step's registered name.
    algorithm: ClassVar[str] = ""


class GPTQOptions(AlgorithmOptions):
    """Options of the ``gptq`` step (see ``algorithms.gptq.gptq_solve``).

    Args:
        block_size: columns per lazy batch.
        damp: damping as a fraction of the mean Hessian diagonal.
        act_order: quantize columns by decreasing Hessian diagonal.
        static_groups: group parameters from the original weight (None: as ``act_order``).
    """

    algorithm: ClassVar[str] = "gptq"
    positional: ClassVar[tuple[str, ...]] = ("block_size", "damp", "act_order", "static_groups")
    block_size: int = Field(default=128, ge=1)
    damp: float = Field(default=0.01, ge=0, allow_inf_nan=False)
    act_order: bool = True
    static_groups: bool | None = None


class AWQOptions(AlgorithmOptions):
    """Options of the ``awq`` step.

    Args:
        n_grid: ``α`` takes ``n_grid + 1`` values ``0, 1/n_grid, ..., 1``.
        clip: run the clipping search.
        max_shrink: smallest clipping ratio is ``1 - max_shrink``.
        clip_grid: clipping ratios tried: ``1 - i / clip_grid`` down to ``1 - max_shrink``.
        no_clip: layer-name suffixes never clipped (attention queries/keys: their errors are
            amplified by the softmax, which the per-layer error does not see).
    """

    algorithm: ClassVar[str] = "awq"
    n_grid: int = Field(default=20, ge=1)
    clip: bool = True
    max_shrink: float = Field(default=0.5, ge=0, lt=1)
    clip_grid: int = Field(default=20, ge=1)
    no_clip: tuple[str, ...] = Field(default=("q_proj", "k_proj", "query", "key"), strict=False)


class SmoothQuantOptions(AlgorithmOptions):
    """Options of the ``smoothquant`` step.

    Args:
        alpha: migration strength in [0, 1], or ``None`` / ``"auto"`` (per-group search,
            keeping no smoothing when nothing beats it).
    """

    algorithm: ClassVar[str] = "smoothquant"
    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | Literal["auto"] | None = None


class AdaRoundOptions(AlgorithmOptions):
    """Options of the ``adaround`` step (defaults sized for a CPU).

    Args:
        iters: optimisation steps per layer.
        batch: samples (images, or rows of a Linear's input) per step.
        lr: Adam learning rate for ``V``.
        reg: weight ``λ`` of the rounding regulariser.
        beta: start and end of the annealed ``β``.
        warmup: fraction of ``iters`` without the regulariser.
        seed: sampling seed.
    """

    algorithm: ClassVar[str] = "adaround"
    iters: int = Field(default=1000, ge=1)
    batch: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-2, gt=0, allow_inf_nan=False)
    reg: float = Field(default=0.01, ge=0, allow_inf_nan=False)
    beta: tuple[
        Annotated[float, Field(gt=0, allow_inf_nan=False)],
        Annotated[float, Field(gt=0, allow_inf_nan=False)],
    ] = Field(default=(20.0, 2.0), strict=False)
    warmup: float = Field(default=0.2, ge=0, le=1, allow_inf_nan=False)
    seed: int = Field(default=0, ge=0)


#: Step name -> the options class its ``LayerSpec.algorithm_args`` entry is validated by.
OPTIONS: dict[str, type[AlgorithmOptions]] = {
    cls.algorithm: cls for cls in (AdaRoundOptions, AWQOptions, GPTQOptions, SmoothQuantOptions)
}


def algorithm_names() -> list[str]:
    """Every accepted step name: the built-in ones and any registered since.

    Returns:
        The names, sorted.
    """
    return sorted({*BUILTIN_ALGORITHMS, *_REGISTERED})


def register_name(name: str) -> None:
    """Accept ``name`` as a step in Plans (``algorithms.register_algorithm`` calls it).

    Args:
        name: the step's name.
    """
    _REGISTERED.add(name)


def register_options(name: str, options: type[AlgorithmOptions]) -> None:
    """Validate ``algorithm_args[name]`` with ``options`` (``algorithms.base.OptionsSlot``).

    Args:
        name: the step's name.
        options: its options class.
    """
    OPTIONS[name] = options


def check_algorithm(spec: str) -> list[str]:
    """Split ``"a+b"`` into known step names, or raise a ConfigError listing the accepted ones.

    Args:
        spec: the algorithm text, e.g. ``"smoothquant+gptq"``.

    Returns:
        The step names in order.
    """
    steps = [s.strip() for s in spec.split("+") if s.strip()]
    known = algorithm_names()
    unknown = [s for s in steps if s not in known]
    if not steps or unknown:
        which = f"unknown algorithm {unknown[0]!r}" if unknown else "no algorithm"
        where = f" in {spec!r}" if len(steps) != 1 else ""
        close = difflib.get_close_matches(unknown[0], known, n=1) if unknown else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{which}{where}{hint}; accepted: {', '.join(known)} "
            "(combine with '+', e.g. 'awq+gptq')"
        )
    return steps


def options_for(algorithm: str, args: dict[str, Any], base: AlgorithmOptions | None = None) -> Any:
    """The options of ``algorithm``: ``base`` (default: the defaults) with ``args`` on top.

    Args:
        algorithm: a step that takes options (a key of :data:`OPTIONS`).
        args: field -> plain (JSON/YAML) value.
        base: options to start from.

    Returns:
        The validated options instance.
    """
    if algorithm not in OPTIONS:
        raise ConfigError(
            f"algorithm_args names {algorithm!r}, which has no options; algorithms with "
            f"options: {', '.join(sorted(OPTIONS))}"
        )
    cls = OPTIONS[algorithm]
    if not all(isinstance(k, str) for k in args):
        raise ConfigError(f"{algorithm} options {args!r}: field names are text")
    start = base.model_dump() if base is not None else {}
    return cls(**{**start, **args})


def checked_args(args: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate ``LayerSpec.algorithm_args``; return them as plain JSON values (given fields only).

    Args:
        args: step name -> field -> value.

    Returns:
        The same fields, normalised (tuples as lists, integers where a float is expected as
        floats), so that a Plan round-trips through JSON unchanged.
    """
    out = {}
    for name, fields in args.items():
        opts = options_for(name, fields)
        out[name] = opts.model_dump(mode="json", include=set(fields))
    return out
