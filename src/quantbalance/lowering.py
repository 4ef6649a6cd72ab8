"""Lowering a Plan for the int8 kernels of a target CPU (``Plan.hardware``).

x86 CPUs without VNNI add pairs of uint8 × int8 products into a saturating int16, exact only
for weight codes within ±64 (see ``quantbalance.hardware``). A Plan for ``hardware="avx2"``
therefore gives 7-bit weights to every layer whose int8 kernel would meet int8 activations;
``qb.quantize``, the search's cost model and its latency model all apply the same rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from quantbalance.errors import ConfigError
from quantbalance.hardware import SATURATING_WEIGHT_ABSMAX, Int8Target, detect

if TYPE_CHECKING:
    from quantbalance.plan import LayerSpec, Plan


def lower_spec(
    spec: LayerSpec | None, type_name: str, hardware: Int8Target | None
) -> LayerSpec | None:
    """The spec that the int8 kernels of ``hardware`` compute exactly.

    On ``avx2`` (x86 without VNNI) int8 GEMMs add pairs of uint8 × int8 products into a
    saturating int16, exact only for weight codes within ±64: a layer with 8-bit activations and
    signed symmetric weights wider than 7 bits gets 7-bit weights (codes in ``[-64, 63]``, still
    stored as int8 by the engines). Weight-only layers, embeddings (their inputs are indices) and
    unsigned or asymmetric weights (exact ``u8 × u8`` kernels) are left alone.

    Args:
        spec: the spec (or None).
        type_name: the layer's class name.
        hardware: the Plan's target.

    Returns:
        The spec, lowered where needed.
    """
    if hardware != "avx2" or spec is None or spec.activation is None or spec.weight is None:
        return spec
    w = spec.weight
    wide = 2 ** (w.bits - 1) > SATURATING_WEIGHT_ABSMAX
    if (
        type_name == "Embedding" or spec.activation.bits != 8 or not w.format_kind.integer
        or not (w.signed and w.symmetric) or not wide
    ):  # fmt: skip
        return spec
    return spec.model_copy(update={"weight": w.model_copy(update={"bits": 7})})


HARDWARE_CHOICES = ("auto", "vnni", "avx2")


def for_hardware(plan: Plan, hardware: str | None) -> Plan:
    """``plan`` with its int8 target decided (see ``Plan.hardware``).

    Args:
        plan: the Plan.
        hardware: ``auto`` (keep the Plan's target, else this machine's:
            :attr:`quantbalance.hardware.Hardware.int8_target`), ``vnni`` or ``avx2`` (a target
            machine), or None (leave the Plan as it is).

    Returns:
        The Plan with ``hardware`` set (unchanged when ``hardware`` is None).
    """
    if hardware is None:
        return plan
    if hardware not in HARDWARE_CHOICES:
        raise ConfigError(f"hardware={hardware!r}; accepted: {', '.join(HARDWARE_CHOICES)}, None")
    if hardware == "auto":
        if plan.hardware is not None:
            return plan
        hardware = plan_target()
    return plan.model_copy(update={"hardware": hardware})


_TARGET: contextvars.ContextVar[Int8Target | None] = contextvars.ContextVar(
    "quantbalance_int8_target", default=None
)


def plan_target() -> Int8Target:
    """The int8 target that Plans without one are quantized, costed and timed for.

    Returns:
        The target set by :func:`targeting` (e.g. ``qb.search(hardware="vnni")``), else this
        machine's (:attr:`quantbalance.hardware.Hardware.int8_target`).
    """
    return _TARGET.get() or detect().int8_target


def check_hardware(hardware: Any) -> Int8Target | None:
    """Validate a ``hardware`` argument.

    Args:
        hardware: ``auto`` (or None), ``vnni`` or ``avx2``.

    Returns:
        The explicit target, or None for ``auto``.

    Raises:
        ConfigError: any other value.
    """
    if hardware is None or hardware == "auto":
        return None
    if hardware not in HARDWARE_CHOICES:
        raise ConfigError(
            f"hardware={hardware!r}; accepted: 'auto' (this machine), 'vnni' (CPUs with VNNI/AMX "
            "int8 dot products: full-range int8 weights) or 'avx2' (x86 without VNNI: 7-bit "
            "weights where activations are int8)"
        )
    return cast(Int8Target, hardware)


@contextlib.contextmanager
def targeting(hardware: str | None) -> Iterator[Int8Target]:
    """Quantize, cost and time Plans for ``hardware`` inside the block (this thread/task).

    Args:
        hardware: ``auto``/None (this machine), ``vnni`` or ``avx2``.

    Yields:
        The target in force.
    """
    token = _TARGET.set(check_hardware(hardware) or _TARGET.get())
    try:
        yield plan_target()
    finally:
        _TARGET.reset(token)


F = TypeVar("F", bound=Callable[..., Any])


def targeted(fn: F, hardware: str | None) -> F:
    """``fn`` run under :func:`targeting` ``hardware`` (the CLI's ``--hardware``).

    Args:
        fn: any function.
        hardware: ``auto``/None, ``vnni`` or ``avx2`` (checked now).

    Returns:
        The wrapped function.
    """
    check_hardware(hardware)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with targeting(hardware):
            return fn(*args, **kwargs)

    return cast(F, run)
