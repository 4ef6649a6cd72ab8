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

import copy
import hashlib
import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from quantbalance.args import checked
from quantbalance.errors import CheckpointError
from quantbalance.formats import QuantizedTensor, Scheme
from quantbalance.io import atomic_write
from quantbalance.nn import (
    PARTS,
    ActQuantizer,
    QuantModule,
    quantized_layers,
    quantized_type,
    weight_matrix,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_FORMAT_KEY = "quantbalance.format"


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
    blob = st_save(tensors, metadata=meta)
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
    from quantbalance.deploy.sharded import is_sharded, read_sharded

    meta, tensors = read_sharded(path) if is_sharded(path) else read(path)
    rebuilt = _rebuild(skeleton(model, meta, str(path)), meta, tensors, str(path))
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


def read(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint: header, format version, tensors and checksum.

    Args:
        path: the checkpoint file.

    Returns:
        ``(metadata, tensors)``.

    Raises:
        CheckpointError: naming what is wrong with the file.
    """
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder; give the .safetensors file qb.save wrote")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e})") from None
    meta = _header_metadata(data, str(path))
    if _FORMAT_KEY not in meta:
        raise CheckpointError(
            f"{path}: a safetensors file without quantbalance metadata (keys: "
            f"{sorted(meta) or 'none'}); it was not written by quantbalance.deploy.save"
        )
    try:
        version = int(meta[_FORMAT_KEY])
    except ValueError:
        raise CheckpointError(f"{path}: format {meta[_FORMAT_KEY]!r} is not an integer") from None
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} (quantbalance "
            f"{meta.get('quantbalance.version', '?')}) predates quantized weights as module "
            f"state; this quantbalance reads format {FORMAT_VERSION}. Re-save it: load it with "
            "the quantbalance that wrote it, or quantize the model again, then qb.save"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} (quantbalance "
            f"{meta.get('quantbalance.version', '?')}) is newer than this quantbalance reads "
            f"(format <= {FORMAT_VERSION}); upgrade quantbalance"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors data ({e})") from None
    got = checksum(tensors, meta)
    if got != meta.get("checksum"):
        raise CheckpointError(
            f"{path}: checksum mismatch (stored {meta.get('checksum')!r}, computed {got!r}); "
            "the file was altered or corrupted after it was written"
        )
    return meta, tensors


def checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """The checkpoint checksum (see the module docstring for the exact byte order).

    Args:
        tensors: name -> tensor as stored.
        meta: the metadata (its ``checksum`` entry is ignored).

    Returns:
        ``"sha256:<hex>"``.
    """
    h = hashlib.sha256()
    rest = {k: v for k, v in meta.items() if k != "checksum"}
    h.update(json.dumps(rest, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _header_metadata(data: bytes, where: str) -> dict[str, str]:
    if len(data) < 8:
        raise CheckpointError(f"{where}: {len(data)} bytes, truncated (no safetensors header)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise CheckpointError(
            f"{where}: header of {n} bytes does not fit in the file's {len(data)} bytes; the "
            "file is truncated or not a safetensors file"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: unreadable safetensors header ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _collect(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict (each tensor once) and the metadata describing how to rebuild."""
    import quantbalance

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
        "quantbalance.version": quantbalance.__version__,
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
    from quantbalance.algorithms.smoothquant import ScaledActivation, SmoothInput

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


def _rebuild(
    skeleton: nn.Module, meta: dict[str, str], tensors: dict[str, torch.Tensor], where: str
) -> nn.Module:
    from quantbalance.deploy.sharded import fill_meta
    from quantbalance.plan import Plan
    from quantbalance.quantize import QuantizationInfo
    from quantbalance.transform import fold_batchnorm

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
    state = dict(tensors)
    state.update({k: state[v] for k, v in aliases.items() if v in state})
    for name, spec in layers.items():
        _install_layer(model, name, spec, state, where)
    fill_meta(model, state, where)  # a meta skeleton (model larger than memory): data from here
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: the skeleton does not match the checkpoint: {e}") from None
    _retie(model, aliases)
    plan = Plan(**json.loads(meta["plan"])) if meta.get("plan", "null") != "null" else None
    if plan is not None:
        model.qb_plan = plan
        model.qb_info = QuantizationInfo.from_dict(plan, info)
    return model


def _install_layer(
    model: nn.Module, name: str, spec: dict[str, Any], state: dict[str, torch.Tensor], where: str
) -> None:
    """Put the quantized layer ``name`` into the skeleton, built from the checkpoint's tensors."""
    from quantbalance.transform import replace_module

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
