"""The algorithm contract and registry.

An algorithm is a function ``step(ctx)`` over a :class:`QuantContext`: it may transform the
float model (e.g. migrate scales, for SmoothQuant/AWQ) and/or fill ``ctx.qweights`` with
quantized weights for the layers it owns. Steps compose with ``+`` (``"awq+gptq"``); round to
nearest fills whatever is left.

Memory: a step calls ``ctx.release(name)`` once it no longer needs a layer's float weight; when
``quantize`` allows it (no later step reads float weights), the layer's quantized module is
installed right away and its float weight freed, instead of holding every float weight and
every quantized weight until the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import nn

from quantbalance.calibration.offload import BlockHooks
from quantbalance.errors import CalibrationError
from quantbalance.formats import QuantizedTensor
from quantbalance.options import (
    AlgorithmOptions,
    check_algorithm,
    options_for,
    register_name,
    register_options,
)
from quantbalance.plan import LayerSpec

T = TypeVar("T", bound=AlgorithmOptions)


@dataclass
class QuantContext:
    """State shared by the algorithm steps of one ``quantize`` call.

    Attributes:
        model: the (copied) float model being quantized; steps may modify it.
        specs: layer name -> LayerSpec for the layers to quantize.
        calib_data: validated calibration batches, or None.
        qweights: layer name -> quantized weight, filled by the steps.
        progress: show progress bars.
        log: per-step facts for the result (e.g. chosen scales, errors).
        install: called by :meth:`release` to put a layer's quantized module in the model now
            (set by ``quantize`` while no later step needs float weights; None: wait).
        blocks: hooks the block-by-block steps pass to ``run_sequential`` (e.g. load each block's
            weights before it runs and drop them after, for models larger than memory).
    """

    model: nn.Module
    specs: dict[str, LayerSpec]
    calib_data: list[Any] | None
    qweights: dict[str, QuantizedTensor] = field(default_factory=dict)
    progress: bool = True
    log: dict[str, Any] = field(default_factory=dict)
    install: Callable[[str], None] | None = None
    blocks: BlockHooks | None = None

    def release(self, name: str) -> None:
        """Say that the current step no longer needs ``name``'s float weight.

        The layer must already have its weight in :attr:`qweights`. With :attr:`install` set,
        its quantized module replaces the float one now (freeing the float weight).

        Args:
            name: the layer.
        """
        if self.install is not None:
            self.install(name)

    def layers_for(self, algorithm: str) -> dict[str, nn.Module]:
        """Layers whose spec names ``algorithm`` (as a ``+``-part) and that have a weight scheme.

        Args:
            algorithm: a step name.

        Returns:
            name -> module, in model order.
        """
        return {
            n: self.model.get_submodule(n)
            for n, s in self.specs.items()
            if s.weight is not None and algorithm in s.algorithm.split("+")
        }

    def require_data(self, algorithm: str) -> list[Any]:
        """Calibration batches, or a clear error naming the algorithm.

        Args:
            algorithm: the step that needs data.

        Returns:
            The batches.
        """
        if not self.calib_data:
            raise CalibrationError(
                f"algorithm {algorithm!r} needs calibration data: pass calib_data=..."
            )
        return self.calib_data


Step = Callable[[QuantContext], None]
ALGORITHMS: dict[str, Step] = {}
NEEDS_DATA: set[str] = set()


def register_algorithm(name: str, needs_data: bool = False) -> Callable[[Step], Step]:
    """Register an algorithm step under ``name`` (Plans then accept the name).

    Args:
        name: the name used in Plans and on the CLI.
        needs_data: whether the step requires calibration data.

    Returns:
        The decorator.
    """

    def deco(fn: Step) -> Step:
        ALGORITHMS[name] = fn
        register_name(name)
        if needs_data:
            NEEDS_DATA.add(name)
        return fn

    return deco


def parse_algorithm(spec: str) -> list[str]:
    """Split ``"a+b"`` into registered step names (the check ``LayerSpec`` runs).

    Args:
        spec: algorithm string.

    Returns:
        The step names in order.
    """
    return check_algorithm(spec)


#: name -> OptionsSlot of every algorithm step with context-local options.
OPTION_SLOTS: dict[str, OptionsSlot[Any]] = {}


def options_in_force() -> dict[str, dict[str, Any]]:
    """The context-local options of every algorithm step, as plain data (cache keys, reports).

    Returns:
        step name -> its options' fields.
    """
    return {name: slot.current().model_dump() for name, slot in sorted(OPTION_SLOTS.items())}


def options_snapshot() -> dict[str, Any]:
    """The options set in this context for every algorithm (to run elsewhere the same way).

    Returns:
        step name -> options object (only the ones set by an ``override`` block).
    """
    return {n: v for n, slot in OPTION_SLOTS.items() if (v := slot._var.get()) is not None}


def apply_options(snapshot: dict[str, Any]) -> None:
    """Set options captured by :func:`options_snapshot` in this context (e.g. a Ray worker).

    Args:
        snapshot: step name -> options object.
    """
    for name, value in snapshot.items():
        OPTION_SLOTS[name]._var.set(value)


class OptionsSlot(Generic[T]):
    """Context-local options of one algorithm step (no global state).

    ``slot.current()`` gives the options in force (the class defaults outside any block);
    ``with slot.override(field=value):`` sets some of them for the calls inside the block;
    ``slot.for_spec(spec)`` adds a layer's ``LayerSpec.algorithm_args[name]`` on top. Every
    one of them is an instance of the step's options class, validated the same way.

    Creating the slot registers ``cls`` as the options a Plan may give under its step name.

    Args:
        cls: the step's options (an :class:`~quantbalance.options.AlgorithmOptions`).
        label: algorithm name used in messages (e.g. ``GPTQ``).
        name: the step's registered name (default: ``cls.algorithm``).
    """

    def __init__(self, cls: type[T], label: str, name: str | None = None) -> None:
        self.cls = cls
        self.label = label
        self.name = name or cls.algorithm
        self._var: ContextVar[T | None] = ContextVar(f"quantbalance_{label}", default=None)
        register_options(self.name, cls)
        OPTION_SLOTS[self.name] = self

    def for_spec(self, spec: LayerSpec) -> T:
        """The options for one layer: :meth:`current`, then the spec's ``algorithm_args``.

        Args:
            spec: the layer's spec.

        Returns:
            The options.
        """
        args = spec.algorithm_args.get(self.name)
        if not args:
            return self.current()
        return options_for(self.name, args, self.current())  # type: ignore[no-any-return]

    def current(self) -> T:
        """The options in force.

        Returns:
            The options.
        """
        return self._var.get() or self.cls()

    @contextmanager
    def override(self, **overrides: Any) -> Iterator[T]:
        """Options used inside a ``with`` block.

        Args:
            **overrides: fields of the options class (validated by it: unknown or wrong-typed
                fields raise a ConfigError naming the accepted ones).

        Returns:
            A context manager yielding the options in force.
        """
        opts: T = options_for(self.name, overrides, self.current())
        token = self._var.set(opts)
        try:
            yield opts
        finally:
            self._var.reset(token)
