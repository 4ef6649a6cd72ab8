"""Fingerprint of an evaluation function: its code and the data it reaches, hashed.

A cached measurement is only as good as the function that produced it. The fingerprint walks an
eval function (plain function, closure, bound method, ``functools.partial`` or callable object)
and hashes:

* the code (bytecode, constants and names, recursively for nested functions and lambdas);
* closure cells, default arguments and the module globals the code names;
* the data reached through those: tensors, numpy arrays, numbers, strings, containers,
  ``nn.Module`` weights and the attributes of ordinary objects.

Functions and classes of installed libraries and of the standard library count by their
qualified name only (their versions are part of every cache key). What cannot be looked into
(an extension object without ``__dict__``, a generator, a file handle, a graph too large) is
hashed by its type name and listed in ``opaque``: a change in there is caught only by the float
model's reference metrics, which are part of every cache key too. An eval function can name
memo variables to leave out in its attribute ``qb_fingerprint_ignore`` (see
:data:`IGNORE_ATTRIBUTE`).

Example:
    >>> import torch
    >>> x = torch.ones(3)
    >>> f = lambda m: {"s": float((x * 2).sum())}
    >>> a = eval_fingerprint(f).digest
    >>> x.mul_(50)
    tensor([50., 50., 50.])
    >>> eval_fingerprint(f).digest != a
    True
"""

from __future__ import annotations

import functools
import hashlib
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

#: Most objects visited before the rest is hashed by type only (and reported as opaque).
MAX_OBJECTS = 200_000
#: Deepest attribute / container nesting followed from the function.
MAX_DEPTH = 12

#: An eval function may name, in this attribute, closure variables and attributes that only
#: memoise what the rest determines (e.g. ``("cache",)``); they are left out of the hash, so an
#: in-process rerun after the memo filled up still finds its cached measurements.
IGNORE_ATTRIBUTE = "qb_fingerprint_ignore"

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_LIB_MARKERS = ("site-packages", "dist-packages")


@dataclass
class Fingerprint:
    """Result of :func:`eval_fingerprint`.

    Attributes:
        digest: SHA-256 hex digest of everything hashed.
        opaque: what could not be looked into (``where: type``), at most 20 entries.
        parts: short digest of each top-level part (``code``, ``closure variable x``,
            ``global y``, ``attribute z``, ...), to say what changed between two runs.
    """

    digest: str
    opaque: list[str] = field(default_factory=list)
    parts: dict[str, str] = field(default_factory=dict)


def _is_library(obj: Any) -> bool:
    """Whether ``obj`` (function, class or module) is from the stdlib or an installed package."""
    mod_name = getattr(obj, "__module__", None) if not isinstance(obj, types.ModuleType) else None
    mod = obj if isinstance(obj, types.ModuleType) else sys.modules.get(mod_name or "")
    if mod_name in ("builtins", "__builtin__"):
        return True
    top = (getattr(mod, "__name__", None) or mod_name or "").split(".")[0]
    if top in sys.stdlib_module_names:
        return True
    path = str(getattr(mod, "__file__", "") or "")
    return any(m in path for m in _LIB_MARKERS)


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


class _Walker:
    def __init__(self, ignore: frozenset[str] = frozenset()) -> None:
        self.ignore = ignore
        self.h = hashlib.sha256()
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps visited objects alive so their ids stay unique
        self.opaque: list[str] = []
        self.count = 0

    def tag(self, *parts: Any) -> None:
        self.h.update(("\x1f".join(str(p) for p in parts) + "\x1e").encode())

    def note(self, where: str, what: str) -> None:
        if len(self.opaque) < 20 and f"{where}: {what}" not in self.opaque:
            self.opaque.append(f"{where}: {what}")

    def visit(self, x: Any, where: str, depth: int = 0) -> None:
        if isinstance(x, _SCALARS):
            self.tag(type(x).__name__, repr(x))
            return
        if id(x) in self.seen:  # shared or cyclic: refer to the first visit
            self.tag("ref", self.seen[id(x)])
            return
        self.count += 1
        self.seen[id(x)] = self.count
        self.keep.append(x)
        if depth > MAX_DEPTH or self.count > MAX_OBJECTS:
            self.tag("opaque", type(x).__qualname__)
            self.note(where, f"{type(x).__qualname__} (nested too deep or too much to hash)")
            return
        self._dispatch(x, where, depth + 1)

    def _dispatch(self, x: Any, where: str, d: int) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            self.tag("tensor", t.dtype, tuple(t.shape))
            if t.numel():
                self.h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            self._array(x, where)
        elif isinstance(x, np.generic):
            self.tag("np", x.dtype, repr(x.item()))
        elif isinstance(x, types.CodeType):
            self._code(x, where, d)
        elif isinstance(x, types.FunctionType):
            self._function(x, where, d)
        elif isinstance(x, types.MethodType):
            self.tag("method")
            self.visit(x.__func__, where, d)
            self.visit(x.__self__, f"{where}.__self__", d)
        elif isinstance(x, functools.partial):
            self.tag("partial")
            self.visit(x.func, where, d)
            self.visit(x.args, f"{where}(args)", d)
            self.visit(x.keywords, f"{where}(keywords)", d)
        elif isinstance(x, types.ModuleType | types.BuiltinFunctionType) or (
            isinstance(x, type) and _is_library(x)
        ):
            self.tag("named", _name(x) if not isinstance(x, types.ModuleType) else x.__name__)
        elif isinstance(x, type):
            self._class(x, where, d)
        elif isinstance(x, nn.Module):
            self.tag("module", _name(type(x)), x.training)
            self.visit(dict(x.state_dict()), f"{where}.state_dict()", d)
            if not _is_library(type(x)):
                self.visit(type(x), where, d)
        elif isinstance(x, Mapping):
            self.tag("map", type(x).__qualname__, len(x))
            for k in sorted(x, key=repr):
                self.visit(k, where, d)
                self.visit(x[k], f"{where}[{k!r}]", d)
        elif isinstance(x, list | tuple):
            self.tag("seq", type(x).__qualname__, len(x))
            for i, v in enumerate(x):
                self.visit(v, f"{where}[{i}]", d)
        elif isinstance(x, set | frozenset):
            self.tag("set", len(x))
            for v in sorted(x, key=repr):
                self.visit(v, where, d)
        elif hasattr(x, "__dict__") and isinstance(vars(x), dict):
            self.tag("object", _name(type(x)))
            if not _is_library(type(x)):
                self.visit(type(x), where, d)
            self.visit(dict(vars(x)), where, d)
        else:
            self.tag("opaque", _name(type(x)))
            self.note(where, _name(type(x)))

    def _array(self, x: np.ndarray, where: str) -> None:
        self.tag("ndarray", x.dtype, x.shape)
        if x.dtype.hasobject:
            for i, v in enumerate(x.reshape(-1).tolist()):
                self.visit(v, f"{where}[{i}]")
        else:
            self.h.update(np.ascontiguousarray(x).tobytes())

    def _code(self, c: types.CodeType, where: str, d: int) -> None:
        self.tag("code", c.co_name, c.co_argcount, c.co_kwonlyargcount, c.co_flags)
        self.h.update(c.co_code)
        self.tag(*c.co_names)
        for const in c.co_consts:
            self.visit(const, f"{where}<const>", d)

    def _function(self, f: types.FunctionType, where: str, d: int) -> None:
        library = _is_library(f)
        self.tag("named" if library else "function", _name(f))
        if not library:  # a library's code counts by its version (part of every cache key)
            self._code(f.__code__, where, d)
        self.visit(f.__defaults__, f"{where}(defaults)", d)
        self.visit(f.__kwdefaults__, f"{where}(kwdefaults)", d)
        for var, cell in zip(f.__code__.co_freevars, f.__closure__ or (), strict=True):
            if var in self.ignore:
                continue
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a name bound later)
                self.tag("empty cell", var)
                continue
            self.visit(value, f"{where}.<closure {var}>", d)
        if library:
            return
        g = f.__globals__
        for name in sorted(_global_names(f.__code__)):
            if name in g:
                self.tag("global", name)
                self.visit(g[name], f"global {name}", d)

    def _class(self, cls: type, where: str, d: int) -> None:
        self.tag("class", _name(cls))
        for k, v in sorted(vars(cls).items()):
            if isinstance(v, types.FunctionType | staticmethod | classmethod | property):
                self.tag("member", k)
                self.visit(getattr(v, "__func__", getattr(v, "fget", v)), f"{_name(cls)}.{k}", d)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


def _parts(fn: Callable[..., Any], ignore: frozenset[str]) -> dict[str, Any]:
    """The top-level parts of an eval function, each hashed on its own (to name what changed)."""
    parts: dict[str, Any] = {}
    if isinstance(fn, types.MethodType):
        parts["bound object"] = fn.__self__
        fn = fn.__func__
    if isinstance(fn, functools.partial):
        parts["partial arguments"] = (fn.args, fn.keywords)
        fn = fn.func
    if isinstance(fn, types.FunctionType):  # walked even when a library defines it (tasks)
        parts["code"] = fn.__code__
        parts["defaults"] = (fn.__defaults__, fn.__kwdefaults__)
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            if var in ignore:
                continue
            try:
                parts[f"closure variable {var}"] = cell.cell_contents
            except ValueError:
                parts[f"closure variable {var}"] = "<empty cell>"
        for name in sorted(_global_names(fn.__code__)):
            if name in fn.__globals__:
                parts[f"global {name}"] = fn.__globals__[name]
    else:  # a callable object: its class's code and its attributes
        parts["class"] = type(fn)
        for k, v in sorted(getattr(fn, "__dict__", {}).items()):
            if k not in ignore:
                parts[f"attribute {k}"] = v
    return parts


def eval_fingerprint(fn: Callable[..., Any]) -> Fingerprint:
    """Hash an evaluation function's code and the data it reaches (see the module doc).

    Args:
        fn: the function (any callable).

    Returns:
        The :class:`Fingerprint`.
    """
    ignore = frozenset(getattr(fn, IGNORE_ATTRIBUTE, ()))
    digests: dict[str, str] = {}
    opaque: list[str] = []
    for name, obj in _parts(fn, ignore).items():
        w = _Walker(ignore)
        w.visit(obj, name)
        digests[name] = w.h.hexdigest()[:16]
        opaque += [o for o in w.opaque if o not in opaque]
    plain = isinstance(fn, types.FunctionType | types.MethodType | functools.partial)
    if not plain and not hasattr(fn, "__dict__"):
        opaque.append(f"{_name(type(fn))} (no attributes to hash)")
    total = hashlib.sha256(repr(sorted(digests.items())).encode()).hexdigest()
    return Fingerprint(total, opaque[:20], digests)
