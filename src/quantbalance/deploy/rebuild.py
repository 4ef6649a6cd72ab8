"""Rebuilding a quantized model from checkpoint tensors on a float skeleton."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import torch
from torch import nn

from quantbalance.errors import CheckpointError
from quantbalance.formats import QuantizedTensor, Scheme
from quantbalance.nn import PARTS, ActQuantizer, quantized_type, weight_matrix
from quantbalance.plan import Plan
from quantbalance.quantize_steps import QuantizationInfo
from quantbalance.transform import (
    fold_batchnorm,
    quantize_residual_adds,
    replace_module,
    split_attention,
)

log = logging.getLogger(__name__)


def rebuild(
    skeleton: nn.Module, meta: dict[str, str], tensors: dict[str, torch.Tensor], where: str
) -> nn.Module:
    """Install the checkpoint's quantized layers and tensors into a copy of the skeleton.

    Args:
        skeleton: the float model (deep-copied, never modified).
        meta: the checkpoint metadata (``layers``, ``aliases``, ``info``, ``plan``).
        tensors: the stored tensors by state-dict name (ties once; ``aliases`` names the rest).
        where: the file, for errors.

    Returns:
        The quantized model in eval mode (with ``qb_plan``/``qb_info`` when a Plan was stored).

    Raises:
        CheckpointError: the skeleton does not match the checkpoint.
    """
    layers: dict[str, Any] = json.loads(meta["layers"])
    aliases: dict[str, str] = json.loads(meta["aliases"])
    info = json.loads(meta["info"])
    model = copy.deepcopy(skeleton).eval()
    folded = fold_batchnorm(model) if info.get("folded") else []
    want = [tuple(p) for p in info.get("folded", [])]
    if want and sorted(folded) != sorted(want):
        raise CheckpointError(
            f"{where}: the checkpoint folded BatchNorm pairs {want}, the skeleton folds {folded}"
        )
    split = split_attention(model) if info.get("attention") else []
    if sorted(split) != sorted(info.get("attention", [])):
        raise CheckpointError(
            f"{where}: the checkpoint computed attention modules {info.get('attention')} from "
            f"linear layers; the skeleton has {split}"
        )
    state = dict(tensors)
    state.update({k: state[v] for k, v in aliases.items() if v in state})
    for name, spec in layers.items():
        _install_layer(model, name, spec, state, where)
    plan = Plan(**json.loads(meta["plan"])) if meta.get("plan", "null") != "null" else None
    if plan is not None and plan.residual_activation is not None:
        quantize_residual_adds(model, plan.residual_activation, frozen=True)
    fill_meta(model, state, where)  # a meta skeleton (model larger than memory): data from here
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: the skeleton does not match the checkpoint: {e}") from None
    _retie(model, aliases)
    if plan is not None:
        model.qb_plan = plan
        model.qb_info = QuantizationInfo.from_dict(plan, info)
    return model


def _install_layer(
    model: nn.Module, name: str, spec: dict[str, Any], state: dict[str, torch.Tensor], where: str
) -> None:
    """Put the quantized layer ``name`` into the skeleton, built from the checkpoint's tensors."""
    parts = {p: state[k] for p in PARTS if (k := f"{name}.qweight_{p}") in state}
    try:
        qt = QuantizedTensor.from_parts(parts, spec["qweight"])
    except CheckpointError as e:
        raise CheckpointError(f"{where}: layer {name!r}: {e}") from None
    mod = _skeleton_layer(model, name, spec, qt, where)
    act = None
    if spec["act"] is not None:
        a = spec["act"]
        act = ActQuantizer.frozen(Scheme(**a["scheme"]), a["mode"], a["observer"])
    qtype = quantized_type(mod)
    assert qtype is not None
    new = qtype.from_float(mod, qt, act)
    if spec.get("input_smooth"):
        key = f"{name}.input_smooth"
        if key not in state:
            raise CheckpointError(f"{where}: layer {name!r} has no tensor {key}")
        new.set_input_smooth(torch.ones_like(state[key]))
    replace_module(model, name, new)


def _skeleton_layer(
    model: nn.Module, name: str, spec: dict[str, Any], qt: QuantizedTensor, where: str
) -> nn.Module:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(
            f"{where}: quantized layer {name!r} does not exist in the skeleton "
            f"({type(model).__name__})"
        ) from None
    qtype = quantized_type(mod)
    if qtype is None or qtype.__name__ != spec["module"]:
        raise CheckpointError(
            f"{where}: layer {name!r} is a {type(mod).__name__} in the skeleton; the checkpoint "
            f"stores a {spec['module']} quantized from a {spec['float_type']}"
        )
    shape = tuple(weight_matrix(mod).shape)
    if shape != tuple(qt.shape):
        raise CheckpointError(
            f"{where}: layer {name!r}: skeleton weight shape {shape}, checkpoint weight shape "
            f"{tuple(qt.shape)}"
        )
    return mod


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make every aliased parameter/buffer the same object as its canonical tensor again."""
    for alias, canon in aliases.items():
        src_mod, _, src_leaf = canon.rpartition(".")
        dst_mod, _, dst_leaf = alias.rpartition(".")
        src = model.get_submodule(src_mod)
        dst = model.get_submodule(dst_mod)
        if src_leaf in src._parameters and dst_leaf in dst._parameters:
            dst._parameters[dst_leaf] = src._parameters[src_leaf]
        elif src_leaf in src._buffers and dst_leaf in dst._buffers:
            dst._buffers[dst_leaf] = src._buffers[src_leaf]


def fill_meta(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Give the skeleton's ``meta`` parameters and buffers the checkpoint's data, in place.

    A skeleton built on the ``meta`` device (``accelerate.init_empty_weights``, or
    ``quantbalance.quantize_offload.skeleton``) holds no float weights, so a checkpoint of a
    model larger than memory loads without the float model ever being materialised. Each
    ``meta`` tensor takes the stored tensor of its name (cast to the skeleton's dtype; a
    parameter stays a parameter); tensors that already hold data are left to
    ``load_state_dict``. Called on the quantized layers already installed, so the float weights
    they replaced are no longer asked for.

    Args:
        model: the skeleton (quantized layers installed).
        state: state-dict name -> stored tensor (aliases resolved).
        where: the checkpoint, for errors.

    Raises:
        CheckpointError: a ``meta`` tensor the checkpoint does not store (e.g. a non-persistent
            buffer that was built on ``meta`` too: build the skeleton with
            ``init_empty_weights()``, which keeps buffers real).
    """
    named = [*model.named_parameters(remove_duplicate=False),
             *model.named_buffers(remove_duplicate=False)]  # fmt: skip
    empty = [(n, t) for n, t in named if t.is_meta]
    missing = [n for n, _ in empty if n not in state]
    if missing:
        raise CheckpointError(
            f"{where}: the skeleton's tensors {missing[:5]} are on the meta device and the "
            "checkpoint does not store them; build the skeleton with "
            "accelerate.init_empty_weights() (buffers stay real) or pass a loaded model"
        )
    for name, t in empty:
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        value = state[name].to(t.dtype)
        if leaf in mod._parameters:
            mod._parameters[leaf] = nn.Parameter(value, requires_grad=t.requires_grad)
        else:
            mod._buffers[leaf] = value
    if empty:
        log.debug("%s: %d meta tensors given the checkpoint's data", where, len(empty))
