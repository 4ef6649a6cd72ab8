"""The search's candidates: which specs each layer may take (``default_candidates``,
``latency_candidates``), their names (``spec_key``) and each layer's options (``layer_options``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from torch import nn

from quantbalance.errors import ConfigError, PlanError
from quantbalance.formats import PerChannel, Scheme
from quantbalance.formats.kinds import storable
from quantbalance.nn import weight_matrix
from quantbalance.plan import PRESET_SPECS, LayerSpec
from quantbalance.transform import quantizable_layers

log = logging.getLogger(__name__)

Options = dict[str, LayerSpec | None]
Candidates = Sequence[LayerSpec | None] | Options | Callable[[str, nn.Module], Options] | None
FLOAT = "float"


def _p(name: str) -> LayerSpec:
    return PRESET_SPECS[name]


def default_candidates(module: nn.Module) -> Options:
    """Sensible candidates for a layer type (keys are preset names), float included.

    Linear and Embedding: int8 weights, int4 and int3 asymmetric weights in groups of 128;
    Linear also W8A8 (static per-tensor activations, the fast oneDNN kernel). Convolutions:
    int8 weights, W8A8, W4A8, int4 and asymmetric int3 weights (per output channel).

    Args:
        module: the layer.

    Returns:
        key -> spec (None = float).
    """
    low = {"w4-g128": _p("w4-g128"), "w3-g128": _p("w3-g128")}
    if isinstance(module, nn.Embedding):
        return {FLOAT: None, "int8-weight": _p("int8-weight"), **low}
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return {
            FLOAT: None,
            "int8-weight": _p("int8-weight"),
            "w8a8": _p("w8a8"),
            "w4a8": _p("w4a8"),
            "w4": LayerSpec(weight=Scheme(4, granularity=PerChannel())),
            "w3": LayerSpec(weight=Scheme(3, symmetric=False, granularity=PerChannel())),
        }
    return {FLOAT: None, "int8-weight": _p("int8-weight"), "w8a8": _p("w8a8"), **low}


def latency_candidates(module: nn.Module) -> Options:
    """:func:`default_candidates` plus W8A8 with per-token dynamic activations for Linear.

    Per-token dynamic activations need no calibrated range (robust to outlier tokens) and run
    on an int8 kernel (``torch._int_mm`` + rescale, see ``search.latency``), but cost the same
    bytes as ``int8-weight``; they are candidates when the search minimises latency.

    Args:
        module: the layer.

    Returns:
        key -> spec (None = float).
    """
    opts = default_candidates(module)
    if isinstance(module, nn.Linear):
        opts["w8a8-dynamic"] = _p("w8a8-dynamic")
    return opts


def spec_key(spec: LayerSpec | None) -> str:
    """Short key of a spec: ``float``, the preset name it equals, or its label."""
    if spec is None:
        return FLOAT
    plain = spec.model_copy(update={"algorithm": "rtn"})
    for name in PRESET_SPECS:
        if _p(name) == plain:
            return name
    return spec.label


def layer_options(
    model: nn.Module, layers: Sequence[str], candidates: Candidates, algorithm: str | None
) -> dict[str, Options]:
    """Candidate specs for each layer (float always included).

    Args:
        model: the model.
        layers: layer names.
        candidates: None (per-type defaults), a list of specs (None = float) for every layer, a
            key -> spec dict, or a function ``(name, module) -> key -> spec``.
        algorithm: overrides every spec's algorithm when given.

    Returns:
        layer -> key -> spec.
    """
    if isinstance(candidates, nn.Module | str):
        raise ConfigError(
            f"candidates={candidates!r:.40}: give a list of LayerSpec (None = float), a "
            "key -> LayerSpec dict, or a function (name, module) -> key -> LayerSpec"
        )
    known = quantizable_layers(model)
    unknown = [n for n in layers if n not in known]
    if unknown:
        raise PlanError(
            f"layers {unknown[:5]} are not quantizable layers of the model; its quantizable "
            f"layers: {', '.join(list(known)[:20]) or 'none'}"
        )
    out: dict[str, Options] = {}
    for n in layers:
        mod = model.get_submodule(n)
        if candidates is None:
            opts = default_candidates(mod)
        elif callable(candidates):
            opts = dict(candidates(n, mod))
        elif isinstance(candidates, dict):
            opts = dict(candidates)
        else:
            opts = {spec_key(s): s for s in candidates}
        opts = {FLOAT: None, **opts}
        if algorithm is not None:
            opts = {k: s and s.model_copy(update={"algorithm": algorithm}) for k, s in opts.items()}
        if isinstance(mod, nn.Embedding):
            opts = {k: s for k, s in opts.items() if s is None or s.weight is not None}
        out[n] = _storable(n, mod, opts)
    return out


def _storable(name: str, module: nn.Module, opts: Options) -> Options:
    """``opts`` without the specs whose weight scales would overflow their storage dtype."""
    kept: Options = {}
    for key, spec in opts.items():
        if spec is None or spec.weight is None or storable(weight_matrix(module), spec.weight):
            kept[key] = spec
        else:
            log.warning(
                "layer %r: candidate %s dropped: its %s scales cannot hold this weight's range "
                "(the quantized weight would be inf/NaN)",
                name,
                key,
                spec.weight.scale_dtype,
            )
    return kept
