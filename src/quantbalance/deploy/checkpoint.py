"""Packed checkpoints: one safetensors file, no pickle, rebuilt on a float skeleton.

A quantized model's weights are module state (``QuantModule``'s ``qweight_*`` buffers), so a
checkpoint is the model's ``state_dict()`` plus text metadata. File layout (safetensors: 8-byte
little-endian header length, JSON header, raw tensor data):

* every entry of ``state_dict()`` under its own name: for a quantized layer
  ``<layer>.qweight_packed`` and whichever of ``qweight_scale``, ``qweight_zero_point``,
  ``qweight_codebook`` it has (exactly ``QuantizedTensor.nbytes`` bytes per layer), then float
  weights, biases, activation scales and zero points, SmoothQuant input factors;
* ``__metadata__`` (str -> str, structured values as JSON text): ``quantbalance.format``,
  ``quantbalance.version``, ``torch.version``, ``plan`` (Plan JSON), ``layers`` (per quantized
  layer: its quantized class, float class, the QuantizedTensor's scheme/shape/dtype, the
  input-quantizer config), ``aliases`` (tied tensors and identical quantized weights, stored
  once), ``info`` (the rest of ``qb_info``), optional ``source`` (a task name) and ``checksum``.

``checksum`` is ``sha256:<hex>`` over, in this order: the UTF-8 JSON (sorted keys) of every
other metadata entry, then for each tensor in sorted name order the bytes
``name \\0 dtype \\0 shape \\0`` followed by its raw little-endian data. The data section
therefore holds exactly ``sum(QuantizedTensor.nbytes) + sum(unquantized tensor bytes)`` (ties
once).

Format 1 files (written before quantized weights became module state) are refused with a
``CheckpointError`` that says to re-save them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from quantbalance.algorithms.smoothquant import ScaledActivation, SmoothInput
from quantbalance.args import checked
from quantbalance.deploy.checkpoint_file import (
    FORMAT_KEY,
    FORMAT_VERSION,
    canonical,
    checksum,
    read,
)
from quantbalance.deploy.rebuild import rebuild
from quantbalance.deploy.sharded_file import is_sharded, read_sharded
from quantbalance.errors import CheckpointError
from quantbalance.io import atomic_write
from quantbalance.nn import ActQuantizer, QuantModule, quantized_layers
from quantbalance.version import __version__

log = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "checksum", "load", "module_types", "read", "save", "skeleton"]
_FORMAT_KEY = FORMAT_KEY
_rebuild = rebuild


@checked
def save(qmodel: nn.Module, path: str | Path, *, source: str | None = None) -> Path:
    """Write a quantized model to one safetensors file, atomically.

    Args:
        qmodel: a model returned by ``qb.quantize`` (static activation quantizers frozen).
        path: the target file (``.safetensors`` by convention); replaced only on success.
        source: optional label of where the float model came from (a task name, an HF path),
            named when ``load`` is called without a skeleton.

    Returns:
        The path written.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> import quantbalance as qb, tempfile
        >>> q = qb.quantize(net, "int8-weight", progress=False)
        >>> p = save(q, tempfile.mkdtemp() + "/q.safetensors")
        >>> torch.equal(load(p, net)(torch.ones(1, 4)), q(torch.ones(1, 4)))
        True
    """
    tensors, meta = _collect(qmodel)
    meta["modules"] = json.dumps(module_types(qmodel), sort_keys=True)
    if source is not None:
        meta["source"] = source
    meta["checksum"] = checksum(tensors, meta)
    blob = canonical(st_save(tensors, metadata=meta))
    out = atomic_write(path, lambda tmp: tmp.write_bytes(blob))
    log.info("saved %d tensors (%d bytes) to %s", len(tensors), len(blob), out)
    return out


@checked
def load(path: str | Path, model: nn.Module | Callable[[], nn.Module] | None = None) -> nn.Module:
    """Rebuild a quantized model from a checkpoint written by :func:`save`.

    Args:
        path: the checkpoint file, or a sharded checkpoint folder (``deploy.sharded``; never
            modified).
        model: the float skeleton: a module (deep-copied, never modified) or a callable that
            builds one. (``qb.load`` also accepts a Hugging Face folder or id.)

    Returns:
        The quantized model in eval mode, with ``qb_plan`` and ``qb_info`` restored.

    Raises:
        CheckpointError: truncated/altered/foreign file, future format, or mismatched skeleton.
    """
    meta, tensors = read_sharded(path) if is_sharded(path) else read(path)
    rebuilt = rebuild(skeleton(model, meta, str(path)), meta, tensors, str(path))
    if "modules" in meta:  # written since the check exists: the skeleton's layers must match
        _check_modules(json.loads(meta["modules"]), module_types(rebuilt), str(path))
    return rebuilt


def skeleton(
    model: nn.Module | Callable[[], nn.Module] | None, meta: dict[str, str], where: str
) -> nn.Module:
    """The float skeleton a checkpoint is rebuilt on: a module as is, or what a callable builds.

    Args:
        model: a module, a zero-argument callable returning one, or None.
        meta: the checkpoint metadata (its ``source``, if any, is named in the error).
        where: the file, for errors.

    Returns:
        The float module (the caller deep-copies it).

    Raises:
        CheckpointError: no skeleton given, or the callable built something else.
    """
    if isinstance(model, nn.Module):
        return model
    if model is None:
        hint = f" (it was saved from {meta['source']!r})" if meta.get("source") else ""
        raise CheckpointError(
            f"{where}: no float skeleton given{hint}; pass model=<module>, a callable that "
            "builds it, or (qb.load) a Hugging Face folder"
        )
    if not callable(model):
        raise CheckpointError(
            f"{where}: model={type(model).__name__}; give an nn.Module or a callable building one"
        )
    built = model()
    if not isinstance(built, nn.Module):
        raise CheckpointError(
            f"{where}: the skeleton callable returned {type(built).__name__}, not an nn.Module"
        )
    return built


def module_types(model: nn.Module) -> dict[str, str]:
    """Module name -> class name of every module (parameter-free ones included).

    Args:
        model: the model.

    Returns:
        The map (stored in checkpoints, compared on load).
    """
    return {n: type(m).__name__ for n, m in model.named_modules()}


def _check_modules(saved: Any, got: dict[str, str], where: str) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: unreadable 'modules' metadata")
    diff = sorted(n for n in {*saved, *got} if saved.get(n) != got.get(n))
    if diff:
        shown = ", ".join(f"{n!r}: saved {saved.get(n)}, skeleton {got.get(n)}" for n in diff[:5])
        raise CheckpointError(
            f"{where}: the skeleton's modules differ from the saved model's ({shown}); pass "
            "the float model the checkpoint was quantized from"
        )


def _collect(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict (each tensor once) and the metadata describing how to rebuild."""
    _check_rebuildable(qmodel)
    layers = {name: _layer_meta(name, mod) for name, mod in quantized_layers(qmodel)}
    aliases = _identical_qweights(qmodel)
    tensors: dict[str, torch.Tensor] = {}
    storage: dict[tuple[Any, ...], str] = {}
    for key, t in qmodel.state_dict().items():
        if key in aliases:
            continue
        t = t.detach().cpu()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)
        if t.numel() and ident in storage:
            aliases[key] = storage[ident]
            continue
        storage[ident] = key
        tensors[key] = t.contiguous().clone() if t.numel() else t.contiguous()
    info = getattr(qmodel, "qb_info", None)
    plan = getattr(qmodel, "qb_plan", None)
    meta = {
        _FORMAT_KEY: str(FORMAT_VERSION),
        "quantbalance.version": __version__,
        "torch.version": torch.__version__,
        "plan": plan.to_json() if plan is not None else "null",
        "layers": json.dumps(layers, sort_keys=True),
        "aliases": json.dumps(aliases, sort_keys=True),
        "info": json.dumps(info.to_dict() if info else {}, sort_keys=True, default=str),
    }
    return tensors, meta


def _layer_meta(name: str, mod: QuantModule) -> dict[str, Any]:
    return {
        "module": type(mod).__name__,
        "float_type": mod.float_type.__name__,
        "qweight": mod.qweight.metadata(),
        "act": _act_config(name, mod.input_quantizer),
        "input_smooth": mod.input_smooth is not None,
    }


def _identical_qweights(qmodel: nn.Module) -> dict[str, str]:
    """State-dict keys of quantized weights identical to an earlier layer's -> that layer's keys.

    Tied float weights (an embedding shared with the output projection) quantize to the same
    codes in two layers; they are stored once and shared again on load.
    """
    seen: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for name, mod in quantized_layers(qmodel):
        qt = mod.qweight
        sig = _signature(qt.parts(), qt.metadata())
        if sig not in seen:
            seen[sig] = name
            continue
        for part in qt.parts():
            aliases[f"{name}.qweight_{part}"] = f"{seen[sig]}.qweight_{part}"
    return aliases


def _check_rebuildable(qmodel: nn.Module) -> None:
    """Refuse modules a float skeleton cannot rebuild (run-time SmoothQuant divisions)."""
    for name, mod in qmodel.named_modules():
        if isinstance(mod, ScaledActivation | SmoothInput):
            raise CheckpointError(
                f"module {name!r} ({type(mod).__name__}) divides by SmoothQuant scales at run "
                f"time because its consumers {list(mod.smooth_consumers)} are not all "
                "quantized; quantize every consumer of a smoothed group (or drop smoothquant "
                "for them) to save the model"
            )


def _signature(parts: dict[str, torch.Tensor], qmeta: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(qmeta, sort_keys=True).encode())
    for k in sorted(parts):
        t = parts[k].detach().cpu().contiguous()
        h.update(f"{k}{t.dtype}{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _act_config(name: str, act: ActQuantizer | None) -> dict[str, Any] | None:
    if act is None:
        return None
    if act.mode == "static" and act.observing:
        raise CheckpointError(
            f"layer {name!r}: its static activation quantizer is still calibrating (no frozen "
            "scale); run calibration and freeze() before saving"
        )
    return {
        "scheme": act.scheme.model_dump(mode="json"),
        "mode": act.mode,
        "observer": act.observer_name,
    }
