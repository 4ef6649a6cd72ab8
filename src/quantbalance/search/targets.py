"""Deployment targets narrow the search to what the engine runs exactly.

================  =================================================================================
target            candidates per layer (float always included)
================  =================================================================================
``torch``         the defaults (``default_candidates``; the simulation runs in PyTorch)
``ort``           int8 weights, W8A8 (static uint8 activations), int4/int3 asymmetric weights
                  in groups of 128 (``MatMulNBits``); convolutions int8 / W8A8 / W4A8
``tensorrt``      int8 weights per channel, W8A8 with *symmetric* int8 activations (zero point
                  0, which TensorRT requires), fp8 (e4m3) weights; embeddings stay float
``vllm``          compressed-tensors schemes vLLM loads: int8 weights (W8A16), W8A8 with
                  symmetric int8 weights and per-token dynamic activations, symmetric int4
                  weights in groups of 64 or 32 (Marlin), fp8 weights; embeddings stay float
                  (neither vLLM nor Transformers loads a quantized embedding beside other
                  config groups; a float32 embedding is often most of a small LM's budget:
                  SmolLM2-135M's costs 113 MB, so its smallest vllm Plan is 189 MB)
``transformers``  a compressed-tensors folder Transformers 5.24 loads *exactly* with the
                  embedding quantized: one scheme, symmetric int4 in groups of 32 (fp32
                  scales, counted as the folder stores them), for every Linear and Embedding,
                  or float. Its ``dequantize=True`` path decodes every layer with one config
                  group's scheme, so a second scheme (or a second group size) beside a
                  quantized embedding would not load as simulated
``llama.cpp``     the bit-exact GGML-native schemes (``formats.ggml``): Q8_0, Q5_0, Q4_0, where a
                  row is whole blocks of 32; embeddings too. Q5_1/Q4_1 are left out: their
                  fp16 block minimum is not bit-exact and costs 1 byte per 32 weights more in
                  the file than quantbalance counts, so a byte budget would be exceeded silently
================  =================================================================================

A group size is offered only where it divides the layer's input length (compressed-tensors and
llama.cpp both reject partial groups), so every candidate is exportable as measured.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, Scheme
from quantbalance.formats.ggml import BLOCK, EXACT, GGML_SCHEMES
from quantbalance.lowering import plan_target
from quantbalance.plan import LayerSpec, Plan
from quantbalance.search.candidates import FLOAT, Options, default_candidates, latency_candidates

TARGETS = ("torch", "ort", "tensorrt", "vllm", "transformers", "llama.cpp")

_INT8 = LayerSpec(weight=Scheme(8, granularity=PerChannel()))


def _row_length(module: nn.Module) -> int:
    w = getattr(module, "weight", None)
    return int(w.reshape(w.shape[0], -1).shape[1]) if w is not None else 0


def _ort(module: nn.Module) -> Options:
    return default_candidates(module)  # every default exports as QDQ that ORT runs


def _tensorrt(module: nn.Module) -> Options:
    if isinstance(module, nn.Embedding):
        return {FLOAT: None}
    act = Scheme(8, symmetric=True, granularity=PerTensor())
    return {
        FLOAT: None,
        "int8-weight": _INT8,
        "w8a8-sym": LayerSpec(weight=_INT8.weight, activation=act),
        "fp8-weight": LayerSpec(weight=Scheme(8, kind="fp8_e4m3", granularity=PerChannel())),
    }


def _vllm(module: nn.Module) -> Options:
    if not isinstance(module, nn.Linear):
        return {FLOAT: None}
    act = Scheme(8, symmetric=True, granularity=PerToken())
    opts: Options = {
        FLOAT: None,
        "int8-weight": _INT8,
        "w8a8-dynamic-sym": LayerSpec(weight=_INT8.weight, activation=act, act_mode="dynamic"),
        "fp8-weight": LayerSpec(weight=Scheme(8, kind="fp8_e4m3", granularity=PerChannel())),
    }
    n = _row_length(module)
    for g in (64, 32):
        if n % g == 0:
            opts[f"w4-g{g}-sym"] = LayerSpec(weight=Scheme(4, granularity=PerGroup(size=g)))
            break
    return opts


def _transformers(module: nn.Module) -> Options:
    if not isinstance(module, nn.Linear | nn.Embedding) or _row_length(module) % 32:
        return {FLOAT: None}
    return {FLOAT: None, "w4-g32-sym": LayerSpec(weight=Scheme(4, granularity=PerGroup(size=32)))}


def _llama_cpp(module: nn.Module) -> Options:
    if not isinstance(module, nn.Linear | nn.Embedding) or _row_length(module) % BLOCK:
        return {FLOAT: None}
    exact = {k: s for k, s in GGML_SCHEMES.items() if k in EXACT}
    return {FLOAT: None, **{k: LayerSpec(weight=s) for k, s in exact.items()}}


def target_candidates(target: str, objective: str = "bytes") -> Callable[[str, nn.Module], Options]:
    """The per-layer candidate function of a deployment target.

    Args:
        target: one of :data:`TARGETS`.
        objective: the search objective (``latency`` adds W8A8 per-token for ``torch``).

    Returns:
        ``candidates(name, module) -> key -> spec`` for ``qb.search(candidates=...)``.

    Raises:
        ConfigError: unknown target.
    """
    table: dict[str, Callable[[nn.Module], Options]] = {
        "torch": latency_candidates if objective == "latency" else default_candidates,
        "ort": _ort,
        "tensorrt": _tensorrt,
        "vllm": _vllm,
        "transformers": _transformers,
        "llama.cpp": _llama_cpp,
    }
    if target not in table:
        raise ConfigError(f"unknown target {target!r}; accepted: {', '.join(TARGETS)}")
    fn = table[target]
    return lambda _name, module: fn(module)


def target_presets(options: dict[str, Options]) -> dict[str, Plan]:
    """The uniform Plans of a target: for each of its schemes, every layer offering it takes it.

    With a ``target``, the presets placed beside the searched Plans (and able to be chosen) are
    these, not the generic presets: a generic one (e.g. ``w4-g128`` for llama.cpp) is no Plan the
    target runs exactly, and a uniform llama.cpp type is the baseline a mixed GGUF must beat.

    Args:
        options: layer -> key -> spec, the target's candidates (``layer_options``).

    Returns:
        ``uniform-<key>`` -> Plan (layers without that scheme stay float).
    """
    keys = sorted({k for o in options.values() for k, s in o.items() if s is not None})
    out = {}
    for key in keys:
        layers = {n: o[key] for n, o in options.items() if o.get(key) is not None}
        out[f"uniform-{key}"] = Plan(name=f"uniform-{key}", layers=layers, hardware=plan_target())
    return out
