"""Argument checks of public functions: a wrong type is an ``ArgumentError`` saying what to write.

``@checked`` reads a function's type hints once and checks each argument of every call against
them, without converting anything: classes by ``isinstance``, ``X | None`` and unions,
``Literal``, ``bool``/``int``/``float``/``str`` (``True`` is not an ``int`` here, ``3`` and
numpy numbers are), ``Callable``, and containers by their kind (``Sequence``/``list``/``tuple``:
a list or a tuple, not a string; ``Iterable``: not a string; ``dict``/``Mapping``/``set``), with
their items checked when there are at most 1,000. Hints that cannot be resolved, ``Any``
and type variables accept everything.

Example:
    >>> @checked
    ... def f(n: int, name: str | None = None) -> int:
    ...     return n
    >>> f(3)
    3
    >>> f("3")
    Traceback (most recent call last):
    ...
    quantbalance.errors.ArgumentError: f(): n='3' is a str; expected an int
"""

from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import numbers
import os
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from quantbalance.errors import ArgumentError

F = TypeVar("F", bound=Callable[..., Any])
_MAX_ITEMS = 1000
_ARTICLE = {"int": "an int", "Iterable": "an iterable", "os.PathLike": "a path"}


def _name(t: Any) -> str:
    if t is type(None):
        return "None"
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(t))
    if origin is not None:
        args = [a for a in typing.get_args(t) if a is not Ellipsis]
        inner = f" of {', '.join(_name(a) for a in args)}" if args and len(args) <= 2 else ""
        return _article(getattr(origin, "__name__", str(origin))) + inner
    if isinstance(t, type):
        mod = t.__module__
        full = t.__qualname__ if mod in ("builtins", "typing") else f"{mod}.{t.__qualname__}"
        for short in ("torch.nn.modules.module.", "torch.", "quantbalance."):
            if full.startswith(short):
                full = ("nn." if "nn.modules" in short else "") + full.rsplit(".", 1)[-1]
        return _article(full)
    return str(t)


def _article(name: str) -> str:
    if name in _ARTICLE:
        return _ARTICLE[name]
    if name in ("list", "tuple", "dict", "set", "frozenset", "Sequence", "Mapping", "Callable"):
        return f"a {name}"
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _items_ok(values: Any, t: Any) -> bool:
    values = list(values)
    return len(values) > _MAX_ITEMS or all(fits(v, t) for v in values)


def fits(value: Any, t: Any) -> bool:
    """Whether ``value`` matches the type hint ``t`` (see the module doc; no conversion).

    Args:
        value: the argument.
        t: a resolved type hint.

    Returns:
        True when it fits (or when ``t`` is not checked).
    """
    if t is Any or isinstance(t, TypeVar) or t is object:
        return True
    if t is None or t is type(None):
        return value is None
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is None:
        return _fits_plain(value, t)
    return _fits_generic(value, origin, args)


def _fits_plain(value: Any, t: Any) -> bool:
    if t is os.PathLike:
        return isinstance(value, os.PathLike)
    if t in (cabc.Callable, typing.Callable):  # type: ignore[comparison-overlap]
        return callable(value)
    if not isinstance(t, type):
        return True
    try:
        return isinstance(value, t)
    except TypeError:  # a Protocol that is not runtime-checkable: not checked
        return True


def _fits_generic(value: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    if origin is cabc.Callable:
        return callable(value)
    if origin is type:
        return isinstance(value, type) and (not args or _subclass(value, args[0]))
    if origin in (list, tuple, cabc.Sequence):  # a list or a tuple serves for either
        if isinstance(value, range):
            return origin is not tuple
        if not isinstance(value, list | tuple):
            return False
        return origin is tuple or not args or _items_ok(value, args[0])
    if origin in (dict, cabc.Mapping):
        if not isinstance(value, cabc.Mapping):
            return False
        return len(args) != 2 or (_items_ok(value, args[0]) and _items_ok(value.values(), args[1]))
    if origin in (set, frozenset, cabc.Set):
        return isinstance(value, set | frozenset) and (not args or _items_ok(value, args[0]))
    if origin in (cabc.Iterable, cabc.Iterator, cabc.Collection):
        return isinstance(value, origin) and not isinstance(value, str | bytes)
    if origin is os.PathLike:
        return isinstance(value, os.PathLike)
    return isinstance(origin, type) and isinstance(value, origin)


def _subclass(value: type, t: Any) -> bool:
    if t is Any:
        return True
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return any(_subclass(value, a) for a in typing.get_args(t))
    return isinstance(t, type) and issubclass(value, t)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        out = {}
        g = getattr(fn, "__globals__", {})
        for name, ann in getattr(fn, "__annotations__", {}).items():
            try:
                out[name] = eval(ann, g) if isinstance(ann, str) else ann
            except Exception:
                continue
        return out


def checked(fn: F) -> F:
    """Check every call's arguments against ``fn``'s type hints (see the module doc).

    Args:
        fn: a public function.

    Returns:
        The wrapped function; a mismatch raises ``ArgumentError`` naming the parameter, the
        value, what is expected and, when the parameter has a default, an example.
    """
    sig = inspect.signature(fn)
    state: dict[str, Any] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            # Traced by torch.compile (e.g. fake_quantize inside an engine's forward): reading
            # the hints breaks the graph at every layer; these calls come from the library's
            # own modules, whose arguments were checked when they were built.
            return fn(*args, **kwargs)
        if "hints" not in state:
            state["hints"] = {k: v for k, v in _hints(fn).items() if k != "return"}
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise ArgumentError(
                f"{fn.__name__}(): {e}; its parameters: {', '.join(sig.parameters)}"
            ) from None
        for name, value in bound.arguments.items():
            t = state["hints"].get(name)
            param = sig.parameters[name]
            if t is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if not fits(value, t):
                raise ArgumentError(_message(fn.__name__, name, value, t, param.default))
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _message(fname: str, name: str, value: Any, t: Any, default: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    msg = f"{fname}(): {name}={shown} is a {type(value).__name__}; expected {_name(t)}"
    if default is not inspect.Parameter.empty and default is not None:
        msg += f" (e.g. {name}={default!r})"
    return msg
