"""How much of a model is quantized: weight layers quantized, left float by plan, or unsupported.

A *weight layer* is any module that owns (directly) a parameter of two or more dimensions whose
name contains ``weight`` (Linear, Conv, Embedding and look-alikes, an LSTM's ``weight_ih_l0``, an
attention's ``in_proj_weight``); norms (1-D weights) are not. Each is, after ``quantize``:

* **quantized** (a :class:`~quantbalance.nn.QuantModule`, whatever its class);
* **float by plan**: it has a quantized form but the Plan skipped it (``skip`` patterns, a None
  spec, a type outside ``layer_types``);
* **unsupported**: it has no quantized form (the reason says why). These are what
  ``quantize(strict=True)`` refuses.

Weights are counted per layer (a tied matrix counts in each layer that uses it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from quantbalance.nn import QuantModule, quantized_type, unsupported_reason


@dataclass
class Coverage:
    """Weight layers of a model by what became of them (name -> number of weights).

    Attributes:
        quantized: quantized layers.
        by_plan: float layers the Plan left float (they have a quantized form).
        unsupported: float layers with no quantized form.
        reasons: unsupported layer -> why.
    """

    quantized: dict[str, int] = field(default_factory=dict)
    by_plan: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of weight layers."""
        return len(self.quantized) + len(self.by_plan) + len(self.unsupported)

    @property
    def weight_share(self) -> float:
        """Percentage of all weights (elements) that are quantized."""
        everything = sum(self.quantized.values()) + sum(self.by_plan.values())
        everything += sum(self.unsupported.values())
        return 100.0 * sum(self.quantized.values()) / max(everything, 1)

    def summary(self) -> str:
        """``"quantized N of M weight layers (P % of weights)"``."""
        return (
            f"quantized {len(self.quantized)} of {self.total} weight layers "
            f"({self.weight_share:.1f} % of weights)"
        )

    def left_float(self) -> dict[str, str]:
        """Every float weight layer -> why it is float (``"by plan"`` or the reason)."""
        out = {n: "by plan" for n in self.by_plan}
        out.update(self.reasons)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Coverage:
        """Rebuild from :meth:`to_dict`.

        Args:
            d: the dict.

        Returns:
            The Coverage.
        """
        return cls(**{k: dict(d.get(k, {})) for k in cls.__dataclass_fields__})


def weight_params(module: nn.Module) -> int:
    """Elements of ``module``'s own weight parameters of two or more dimensions (0: none).

    Args:
        module: any module.

    Returns:
        The element count.
    """
    return sum(
        p.numel()
        for n, p in module.named_parameters(recurse=False)
        if "weight" in n and p.dim() >= 2
    )


def coverage(model: nn.Module, quantized: Collection[str] = ()) -> Coverage:
    """Classify every weight layer of ``model``.

    Args:
        model: a float or quantized model.
        quantized: names of float layers to count as quantized (a Plan about to be applied);
            QuantModules always count as quantized.

    Returns:
        The :class:`Coverage`.
    """
    cov = Coverage()
    for name, mod in model.named_modules():
        if isinstance(mod, QuantModule):
            cov.quantized[name] = mod.qweight.numel
            continue
        n = weight_params(mod)
        if not n:
            continue
        if name in quantized:
            cov.quantized[name] = n
        elif quantized_type(mod) is not None:
            cov.by_plan[name] = n
        else:
            cov.unsupported[name] = n
            cov.reasons[name] = unsupported_reason(mod) or "no quantized form"
    return cov
