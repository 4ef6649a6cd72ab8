"""Quantized residual additions: every ``a + b`` of two tensors in a model's forwards.

``quantize_residual_adds`` traces the ``forward`` of each of the model's own modules with
``torch.fx`` (its children stay opaque calls) and replaces each addition of two traced values
(``a + b``, ``torch.add(a, b)``, ``a.add(b)``, ``a += b``) by a :class:`~quantbalance.nn.
QuantAdd` child (which also applies the ReLU when that is all that reads the sum). The module
gets the rewritten forward as a subclass of its own class with the same name, so names, hooks,
children and ``isinstance`` are unchanged. A module that fx cannot trace is refused
(``UnsupportedError`` naming it, its class and why), never passed over: an addition it hides
would otherwise stay float without anyone saying so.

PyTorch's and quantbalance's own modules are not traced (their forwards are the library's);
torch's Transformer layers, whose residual additions live inside, are refused.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import fx, nn

from quantbalance.errors import UnsupportedError
from quantbalance.formats import Scheme
from quantbalance.nn import ActQuantizer, QuantAdd, QuantModule

#: Classes from these packages are not traced: their forwards are library code.
_LIBRARY = ("torch.", "quantbalance.nn", "quantbalance.transform", "quantbalance.algorithms")
#: Library modules with residual additions inside, which cannot be rewritten.
_OPAQUE_RESIDUALS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_ADD_FUNCTIONS = (operator.add, torch.add, operator.iadd)
_ADD_METHODS = ("add", "add_")
_RELU_FUNCTIONS = (torch.relu, torch.relu_, nn.functional.relu)


class _InPlaceProxy(fx.Proxy):
    """A proxy that records ``a += b`` (and the other augmented assignments) as in-place calls.

    ``fx.Proxy`` has no ``__iadd__``, so plain tracing records ``a += b`` as ``a + b`` and the
    traced forward would no longer change ``a``; these record ``operator.iadd`` and friends.
    """


def _augmented(fn: Any) -> Any:
    def method(self: fx.Proxy, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", fn, (self, other), {})

    return method


for _name in ("iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul",
              "iand", "ior", "ixor", "ilshift", "irshift"):  # fmt: skip
    setattr(_InPlaceProxy, f"__{_name}__", _augmented(getattr(operator, _name)))


class _ChildrenAreLeaves(fx.Tracer):
    """Traces one module's own forward; every submodule is one opaque call."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.traced_root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self.traced_root

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _InPlaceProxy(node, self)


def quantize_residual_adds(
    model: nn.Module, scheme: Scheme, observer: str = "minmax", frozen: bool = False
) -> list[str]:
    """Replace every addition of two tensors in the model's own forwards by a ``QuantAdd``.

    Args:
        model: the model (modified in place).
        scheme: activation scheme of the additions' inputs and outputs (static ranges).
        observer: observer of the static ranges.
        frozen: quantizers already calibrated (rebuilding from a checkpoint).

    Returns:
        The names of the ``QuantAdd`` modules added, in model order.

    Raises:
        UnsupportedError: a module's forward cannot be traced or rewritten exactly.
    """
    added: list[str] = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, _OPAQUE_RESIDUALS):
            raise UnsupportedError(
                f"{_where(model, name, mod)}: the residual additions inside torch's "
                f"{type(mod).__name__} cannot be quantized (residual_activation); build the "
                "layer from Linear/LayerNorm modules with the additions in your forward"
            )
        if _library(mod) or getattr(mod, "_qb_residual", False):
            continue
        graph = _trace(model, name, mod)
        adds = [n for n in graph.nodes if _is_add(n)]
        if not adds:
            continue
        _check_rewritable(model, name, mod, adds)
        for i, node in enumerate(adds):
            child = _free_name(mod, i)
            relu = _sole_relu(mod, node)
            mod.add_module(child, QuantAdd(scheme, observer, frozen, relu=relu is not None))
            with graph.inserting_before(node):
                new = graph.call_module(child, tuple(node.args[:2]))
            for old in (relu, node) if relu is not None else (node,):
                old.replace_all_uses_with(new)
                graph.erase_node(old)
            added.append(f"{name}.{child}" if name else child)
        _use_graph(mod, graph)
    return added


def _library(mod: nn.Module) -> bool:
    """Library code, not traced: torch's and quantbalance's modules, quantized layers."""
    quantized = isinstance(mod, QuantModule | ActQuantizer | QuantAdd)
    return quantized or type(mod).__module__.startswith(_LIBRARY)


def _trace(model: nn.Module, name: str, mod: nn.Module) -> fx.Graph:
    try:
        return _ChildrenAreLeaves(mod).trace(mod)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...): all refused
        raise UnsupportedError(
            f"{_where(model, name, mod)}: torch.fx cannot trace its forward to find the "
            f"additions to quantize (residual_activation): {type(e).__name__}: {e}. Its "
            "forward must run without branching on tensor values; or quantize without "
            "residual_activation"
        ) from e


def _is_add(node: fx.Node) -> bool:
    fn = node.op == "call_function" and node.target in _ADD_FUNCTIONS
    method = node.op == "call_method" and node.target in _ADD_METHODS
    if not (fn or method) or len(node.args) < 2:
        return False
    return all(isinstance(a, fx.Node) for a in node.args[:2])


def _check_rewritable(model: nn.Module, name: str, mod: nn.Module, adds: list[fx.Node]) -> None:
    """Refuse what a traced rewrite could change: optional arguments, in-place sums reused."""
    where = _where(model, name, mod)
    params = list(inspect.signature(mod.forward).parameters.values())
    varargs = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    loose = [p.name for p in params if p.default is not p.empty or p.kind in varargs]
    if loose:
        raise UnsupportedError(
            f"{where}: its forward has optional or variable arguments {loose}, whose branches "
            "a traced forward would fix; residual_activation needs a forward of plain inputs"
        )
    for node in adds:
        if len(node.args) > 2 or node.kwargs:
            raise UnsupportedError(f"{where}: addition {node.format_node()} has extra arguments "
                                   "(alpha=...); only a + b can be quantized")  # fmt: skip
        if node.target in (operator.iadd, "add_") and not _private_sum(mod, node):
            raise UnsupportedError(
                f"{where}: in-place addition {node.format_node()} changes a tensor that may be "
                "read elsewhere (only `out += y` on the fresh output of a submodule, read "
                "nowhere else, is rewritten exactly); write `out = out + y`"
            )


def _private_sum(mod: nn.Module, node: fx.Node) -> bool:
    """Whether ``a += b`` may become ``a + b``: ``a`` is a submodule's own output, read once."""
    target = node.args[0]
    assert isinstance(target, fx.Node)
    if target.op != "call_module" or set(target.users) != {node}:
        return False
    return not getattr(mod.get_submodule(str(target.target)), "inplace", False)


def _sole_relu(mod: nn.Module, node: fx.Node) -> fx.Node | None:
    """The ReLU applied to the sum ``node`` and to nothing else, if that is its only reader."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.args[:1] != (node,) or len(user.args) > 1 or set(user.kwargs) - {"inplace"}:
        return None
    if user.op == "call_module":
        return user if type(mod.get_submodule(str(user.target))) is nn.ReLU else None
    fn = user.op == "call_function" and user.target in _RELU_FUNCTIONS
    return user if fn or (user.op == "call_method" and user.target in ("relu", "relu_")) else None


def _free_name(mod: nn.Module, i: int) -> str:
    child = f"residual_add{i}"
    while hasattr(mod, child):
        child += "_"
    return child


def _use_graph(mod: nn.Module, graph: fx.Graph) -> None:
    """Give ``mod`` the rewritten forward: a same-named subclass of its own class."""
    graph.lint()
    code = fx.GraphModule(mod, graph)
    cls = type(mod)
    attrs: dict[str, Any] = {
        "forward": type(code).forward,
        "_qb_residual": True,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
    }
    mod.__class__ = type(cls.__name__, (cls,), attrs)


def _where(model: nn.Module, name: str, mod: nn.Module) -> str:
    return f"module {name or '(root)'!r} ({type(mod).__name__}) of {type(model).__name__}"
