"""The search's budget options as text (``--max-drop 1%``, ``--max-bytes 20MB``,
``--max-latency-ms``) turned into a :class:`~quantbalance.search.Budget`.
"""

from __future__ import annotations

import re

from quantbalance.errors import ConfigError
from quantbalance.search import Budget
from quantbalance.search.result import check_one_limit

_UNITS = {
    "": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}  # fmt: skip


def parse_drop(text: str) -> tuple[float, bool]:
    """``1%`` -> ``(0.01, relative)``; ``0.5`` or ``0.5pt`` -> ``(0.5, absolute)``.

    Args:
        text: the option value.

    Returns:
        ``(max_drop, relative)``.

    Example:
        >>> parse_drop("0.5%")
        (0.005, True)
    """
    t = text.strip().lower()
    m = re.fullmatch(r"([0-9.eE+-]+)\s*(%|pt|points?)?", t)
    if not m:
        raise ConfigError(f"--max-drop {text!r}: give e.g. '1%' (relative) or '0.5' (absolute)")
    value = float(m.group(1))
    return (value / 100, True) if m.group(2) == "%" else (value, False)


def parse_bytes(text: str) -> float:
    """``20MB``, ``15MiB``, ``512k`` or ``2e7`` -> bytes.

    Args:
        text: the option value.

    Returns:
        Bytes.

    Example:
        >>> parse_bytes("1.5MiB")
        1572864.0
    """
    m = re.fullmatch(r"([0-9.eE+]+)\s*([a-zA-Z]*)", text.strip())
    unit = m.group(2).lower() if m else "?"
    if not m or unit not in _UNITS:
        raise ConfigError(f"--max-bytes {text!r}: give e.g. 20MB, 15MiB, 512k or 2e7")
    return float(m.group(1)) * _UNITS[unit]


def parse_budget(
    max_drop: str | None, max_bytes: str | None, max_latency_ms: float | None, metric: str | None
) -> Budget:
    """The :class:`Budget` of ``--max-drop``, ``--max-bytes`` or ``--max-latency-ms``.

    Args:
        max_drop: drop budget text (``1%`` relative, ``0.5`` absolute), or None.
        max_bytes: size budget text (``20MB``), or None.
        max_latency_ms: latency budget, or None.
        metric: ``--metric``.

    Returns:
        The budget.

    Raises:
        ConfigError: not exactly one budget, or a malformed one.
    """
    flags = {"--max-drop": max_drop, "--max-bytes": max_bytes, "--max-latency-ms": max_latency_ms}
    check_one_limit([f for f, v in flags.items() if v is not None], list(flags), "--max-drop 1%")
    if max_drop is not None:
        d, rel = parse_drop(max_drop)
        return Budget(max_drop=d, relative=rel, metric=metric)
    if max_bytes is not None:
        return Budget(max_bytes=parse_bytes(max_bytes), metric=metric)
    return Budget(max_latency_ms=max_latency_ms, metric=metric)
