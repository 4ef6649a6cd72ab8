"""Which op feeds which linears: pairs whose channels can trade scales (AWQ, SmoothQuant).

A :class:`ScaleGroup` is an op ``prev`` (a norm with a per-channel weight, or a Linear) whose
output feeds *only* the group's linears. Dividing ``prev``'s output channel ``c`` by ``s[c]`` and
multiplying input column ``c`` of every linear by ``s[c]`` then leaves the model's function
unchanged in exact arithmetic (:func:`fold_scales`).

Architecture knowledge is data (:data:`FAMILIES`): names relative to one transformer block.

* Llama family (Llama, Mistral, Qwen2, SmolLM): pre-norm, so each norm feeds only its linears;
  ``v_proj -> o_proj`` only when their shapes match (not with grouped-query attention);
  ``up_proj -> down_proj`` because ``down(act(gate) * up)`` is linear in ``up``'s output.
* BERT family: post-norm. A LayerNorm's output also feeds the residual branch, so no
  norm->linear pair is valid; only ``value -> attention.output.dense`` (attention mixes tokens,
  not channels).

When no table matches, :func:`trace_scale_groups` finds norm->linear pairs from forward hooks
(the linear's input *is* the norm's output tensor) and keeps only those whose fold is verified
numerically on an example batch (which rejects residual uses such as post-norm ones).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantbalance.calibration.batch import call_model
from quantbalance.calibration.sequential import find_blocks
from quantbalance.nn import plain_forward

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleGroup:
    """An op and the linears its output feeds (and nothing else).

    Attributes:
        prev_op: name of the norm or Linear whose output channels get divided by the scales.
        linear_names: names of the Linears whose input columns get multiplied by them.
    """

    prev_op: str
    linear_names: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """Scale groups of one architecture family, as names relative to a block."""

    name: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        (
            ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("self_attn.v_proj", ("self_attn.o_proj",)),
            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            ("mlp.up_proj", ("mlp.down_proj",)),
        ),
    ),
    Family("bert", (("attention.self.value", ("attention.output.dense",)),)),
)


def is_norm_like(module: nn.Module) -> bool:
    """A module with a per-channel weight (and optional bias) and no sub-modules, e.g. a norm.

    Args:
        module: any module.

    Returns:
        True for LayerNorm/RMSNorm-style modules that are not Linear/Conv/Embedding.
    """
    if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding):
        return False
    params = dict(module.named_parameters(recurse=False))
    w = params.get("weight")
    return (
        w is not None
        and w.dim() == 1
        and set(params) <= {"weight", "bias"}
        and all(p.shape == w.shape for p in params.values())
        and not any(True for _ in module.children())
    )


def _shared_params(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one module name (tied weights)."""
    owners: dict[int, int] = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {k for k, v in owners.items() if v > 1}


def check_group(model: nn.Module, group: ScaleGroup, shared: set[int] | None = None) -> str | None:
    """Why ``group`` cannot be folded, or None if its shapes and types allow it.

    Args:
        model: the model.
        group: the candidate.
        shared: ids of tied parameters (computed when omitted).

    Returns:
        A reason, or None.
    """
    names = dict(model.named_modules())
    missing = [n for n in (group.prev_op, *group.linear_names) if n not in names]
    if missing:
        return f"no module named {missing}"
    prev = names[group.prev_op]
    linears = [names[n] for n in group.linear_names]
    if not all(isinstance(m, nn.Linear) and plain_forward(m) for m in linears):
        return "not every target is an nn.Linear running nn.Linear's own forward"
    width = {m.in_features for m in linears}
    if len(width) != 1:
        return f"the linears have different input widths {sorted(width)}"
    if isinstance(prev, nn.Linear):
        channels = prev.out_features
    elif is_norm_like(prev):
        channels = prev.weight.numel()
    else:
        return f"{group.prev_op} ({type(prev).__name__}) is neither a Linear nor norm-like"
    if channels != width.pop():
        return f"{group.prev_op} has {channels} output channels, the linears another width"
    shared = _shared_params(model) if shared is None else shared
    if any(id(p) in shared for m in (prev, *linears) for p in m.parameters(recurse=False)):
        return "a weight is tied to another module"
    return None


def find_scale_groups(model: nn.Module, example_batch: Any = None) -> list[ScaleGroup]:
    """Scale groups of ``model``: from :data:`FAMILIES` per block, else traced.

    With an example batch, each table pattern is also verified numerically once (on its first
    block), so a model that only *looks* like a family (e.g. a norm computing ``x·(1 + w)``)
    loses that pattern instead of being folded wrongly.

    Args:
        model: the model.
        example_batch: a batch for the verification and the traced fallback (neither when None).

    Returns:
        The valid groups, in model order.

    Example:
        >>> net = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2))
        >>> find_scale_groups(net, torch.randn(3, 4))
        [ScaleGroup(prev_op='0', linear_names=('1',))]
    """
    by_pattern: dict[tuple[str, str], list[ScaleGroup]] = {}
    found = find_blocks(model)
    if found is not None:
        shared = _shared_params(model)
        prefix, blocks = found
        for i in range(len(blocks)):
            for fam in FAMILIES:
                for prev, linears in fam.groups:
                    at = f"{prefix}.{i}."
                    g = ScaleGroup(at + prev, tuple(at + n for n in linears))
                    why = check_group(model, g, shared)
                    if why is None:
                        by_pattern.setdefault((fam.name, prev), []).append(g)
                    elif not why.startswith("no module"):
                        log.info("%s: skipping %s -> %s: %s", fam.name, g.prev_op,
                                 g.linear_names, why)  # fmt: skip
    if example_batch is not None and by_pattern:
        reference = _output(model, example_batch)
        for key, found_groups in list(by_pattern.items()):
            why = _verify(model, found_groups[0], example_batch, reference, 1e-4)
            if why is not None:
                log.warning("%s pattern %s does not fold here (%s); skipped", *key, why)
                del by_pattern[key]
    groups = sorted((g for gs in by_pattern.values() for g in gs), key=_model_order(model))
    if not groups and example_batch is not None:
        groups = trace_scale_groups(model, example_batch)
    return groups


def _model_order(model: nn.Module) -> Any:
    index = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return lambda g: (index[g.linear_names[0]], index[g.prev_op])


def _output(model: nn.Module, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return _flat(call_model(model, batch))


def fold_scales(model: nn.Module, group: ScaleGroup, scales: torch.Tensor) -> None:
    """Divide ``prev_op``'s output channels by ``scales`` and multiply the linears' inputs by them.

    Args:
        model: the model (modified in place).
        group: the group.
        scales: ``(channels,)`` positive scales.
    """
    prev = model.get_submodule(group.prev_op)
    with torch.no_grad():
        s = scales.detach().to(prev.weight.dtype)
        if isinstance(prev, nn.Linear):
            prev.weight.div_(s.view(-1, 1))
        else:
            prev.weight.div_(s)
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s)
        for name in group.linear_names:
            lin = model.get_submodule(name)
            lin.weight.mul_(s.to(lin.weight.dtype).view(1, -1))


def trace_scale_groups(model: nn.Module, batch: Any, rtol: float = 1e-4) -> list[ScaleGroup]:
    """The generic fallback: pair norms with the linears that read their output tensor.

    Each candidate is verified: folding random scales must leave the model's output unchanged
    (relative error below ``rtol``); candidates whose norm output also feeds something else
    (e.g. a residual branch) fail and are dropped.

    Args:
        model: the model.
        batch: an example batch.
        rtol: tolerance of the verification.

    Returns:
        The verified groups.
    """
    mods = dict(model.named_modules())
    norms = {n: m for n, m in mods.items() if is_norm_like(m)}
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor keeps its id unique
    readers: dict[str, list[str]] = {}
    handles = [m.register_forward_hook(_record_output(n, outputs)) for n, m in norms.items()]
    for n, m in mods.items():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_pre_hook(_record_reader(n, outputs, readers)))
    try:
        reference = _output(model, batch)
    finally:
        for h in handles:
            h.remove()
    shared = _shared_params(model)
    groups = []
    for prev, linears in readers.items():
        g = ScaleGroup(prev, tuple(dict.fromkeys(linears)))
        why = check_group(model, g, shared) or _verify(model, g, batch, reference, rtol)
        if why is None:
            groups.append(g)
        else:
            log.info("traced pair %s -> %s rejected: %s", prev, g.linear_names, why)
    return groups


def _record_output(name: str, outputs: dict[int, tuple[str, torch.Tensor]]) -> Any:
    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outputs[id(out)] = (name, out)

    return hook


def _record_reader(
    name: str, outputs: dict[int, tuple[str, torch.Tensor]], readers: dict[str, list[str]]
) -> Any:
    def hook(_m: nn.Module, inp: tuple[Any, ...]) -> None:
        if inp and isinstance(inp[0], torch.Tensor) and id(inp[0]) in outputs:
            readers.setdefault(outputs[id(inp[0])][0], []).append(name)

    return hook


def _flat(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().float().reshape(-1)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, Sequence) and not isinstance(out, str):
        parts = [_flat(o) for o in out if isinstance(o, torch.Tensor | dict | list | tuple)]
        return torch.cat(parts) if parts else torch.zeros(0)
    return torch.zeros(0)


def _verify(
    model: nn.Module, group: ScaleGroup, batch: Any, reference: torch.Tensor, rtol: float
) -> str | None:
    names = (group.prev_op, *group.linear_names)
    saved = {
        n: {
            k: p.detach().clone() for k, p in model.get_submodule(n).named_parameters(recurse=False)
        }
        for n in names
    }
    width = model.get_submodule(group.linear_names[0]).in_features
    gen = torch.Generator().manual_seed(0)
    scales = torch.exp(torch.rand(width, generator=gen) * 2 - 1)  # in [1/e, e]
    try:
        fold_scales(model, group, scales)
        out = _output(model, batch)
    finally:
        with torch.no_grad():
            for n, params in saved.items():
                for k, v in params.items():
                    getattr(model.get_submodule(n), k).copy_(v)
    err = float((out - reference).norm() / reference.norm().clamp(min=1e-12))
    return None if err < rtol else f"folding changes the output (relative error {err:.2e})"
