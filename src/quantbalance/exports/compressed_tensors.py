"""``format="compressed-tensors"``: a Hugging Face folder that Transformers and vLLM load.

The folder holds ``config.json`` with a ``quantization_config`` (one config group per distinct
weight/activation scheme of the Plan, targets = the layers' exact names, ``ignore`` = the
Linear/Embedding layers left float; a float layer's weight whose values bfloat16 or float16
hold exactly is stored in that dtype, half the bytes, nothing lost), ``model.safetensors``
packed by the compressed-tensors library's own compressors (the format of each group is what
the library infers: ``pack-quantized`` for integer weight-only, ``int-quantized`` with int8
activations, ``float-quantized`` for fp8),
the tokenizer and generation files of the source folder, and ``quantbalance_plan.json``.

A layer with no compressed-tensors form (see ``exports/ct_schemes.py``) raises :class:`NoFormError`
naming it, or with ``fallback="float"`` is stored as its dequantized float weight (exactly what
quantbalance simulated, at float size) and listed in the result's notes. Layers that quantize
their inputs have no lossless fallback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.exports.ct_schemes import NoFormError, input_args, quant_args, weight_tensors
from quantbalance.exports.hf_files import (
    atomic_folder,
    copy_source_files,
    embeddings_tied,
    exact_half,
    float_tensors,
    hf_config,
    quant_modules,
)
from quantbalance.exports.registry import ExportResult, file_sizes, register
from quantbalance.nn import QEmbedding, QuantModule


def _layer(
    name: str, m: nn.Module, bits: int | None = None
) -> tuple[Any, dict[str, torch.Tensor], str]:
    """``(QuantizationScheme, compressed local tensors, format)`` of one quantized layer.

    ``bits``: store the (symmetric integer) codes at this wider width: the same values.
    """
    # deferred: compressed_tensors is an optional extra
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationScheme

    w_args = quant_args(m.qweight.scheme, tuple(m.weight.shape), name)
    if bits is not None and bits != w_args.num_bits:
        w_args = w_args.model_copy(update={"num_bits": bits})
    a_args, a_params = input_args(m, name)
    scheme = QuantizationScheme(targets=[name], weights=w_args, input_activations=a_args)
    float_type = m.float_type if isinstance(m.float_type, type) else nn.Linear
    fmt = infer_module_format(float_type, scheme).value
    compressor = BaseCompressor.get_value_from_registry(fmt)
    packed = compressor.compress(weight_tensors(m, w_args) | a_params, scheme)
    return scheme.model_copy(update={"format": fmt}), dict(packed), fmt


def _config_groups(schemes: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Group identical schemes: ``({"group_0": scheme with targets}, global format)``."""
    # deferred: compressed_tensors is an optional extra
    from compressed_tensors.quantization import QuantizationScheme

    by_key: dict[str, list[str]] = {}
    proto: dict[str, Any] = {}
    for name, sch in schemes.items():
        key = sch.model_copy(update={"targets": []}).model_dump_json()
        by_key.setdefault(key, []).append(name)
        proto[key] = sch
    groups = {
        f"group_{i}": QuantizationScheme(**(proto[k].model_dump() | {"targets": names}))
        for i, (k, names) in enumerate(by_key.items())
    }
    formats = {g.format for g in groups.values()}
    fmt = formats.pop() if len(formats) == 1 else "mixed-precision"
    return groups, fmt


def _widen_to(qmodel: nn.Module) -> int | None:
    """The one bit width to store every layer at so Transformers 5.24 loads the folder exactly.

    Its ``dequantize=True`` path (the only one that rebuilds quantized embeddings) decodes every
    layer with the first config group's scheme, so a Plan that mixes bit widths *and* quantizes
    an embedding cannot be loaded exactly as one group per scheme. When the layers differ only
    in bit width (symmetric integer weights, same granularity, no activation quantization),
    ``b``-bit codes stored as ``B``-bit codes (``B`` the widest) are the same values in one
    config group. None when that is not needed or not possible.
    """
    mods = [m for _, m in quant_modules(qmodel)]
    if not any(isinstance(m, QEmbedding) for m in mods):
        return None
    schemes = [m.qweight.scheme for m in mods]
    if len({s.bits for s in schemes}) < 2 or any(m.input_quantizer is not None for m in mods):
        return None
    if any(s.kind != "uniform" or not s.symmetric or s.bits < 2 for s in schemes):
        return None
    if len({repr(s.granularity) for s in schemes}) != 1:
        return None
    return max(s.bits for s in schemes)


def _loading_notes(qmodel: nn.Module, groups: dict[str, Any]) -> list[str]:
    """How Transformers 5.24 can load the folder exactly, or a loud note that it cannot.

    Its default path cannot rebuild packed zero points or compressed Embedding modules; its
    ``dequantize=True`` path decodes every dense layer with the *first* config group's scheme.
    """
    asym = [g for g in groups.values() if g.format == "pack-quantized" and not g.weights.symmetric]
    mods = dict(qmodel.named_modules())
    emb = [t for g in groups.values() for t in g.targets if isinstance(mods.get(t), QEmbedding)]
    if not (asym or emb):
        return []
    what = "asymmetric packed weights" if asym else "quantized embeddings"
    if len(groups) == 1:
        return [
            f"{what}: load in Transformers with quantization_config=CompressedTensorsConfig("
            "dequantize=True) (its default path does not rebuild packed zero points / compressed "
            "Embedding modules)"
        ]
    return [
        f"NOT loadable exactly by Transformers 5.24: {what} need dequantize=True, which decodes "
        "every layer with the first config group's scheme; for Transformers keep embeddings "
        "float and weights symmetric (search --target vllm does)"
    ]


def _halve_float_layers(tensors: dict[str, torch.Tensor], ignore: list[str]) -> list[str]:
    """Store each float layer's weight as bfloat16/float16 where that holds its values exactly.

    Transformers loads the folder in the config's float32 and casts these back to the very same
    values. quantbalance's size count (the search's budget) counts float layers at float32, so
    the note says how many bytes the folder is below it.
    """
    halved: list[str] = []
    saved = 0
    for name in ignore:
        t = tensors.get(f"{name}.weight")
        h = exact_half(t) if t is not None else None
        if h is not None and h is not t:
            tensors[f"{name}.weight"] = h
            saved += t.numel() * (t.element_size() - h.element_size())
            halved.append(f"{name} ({str(h.dtype).removeprefix('torch.')})")
    if not halved:
        return []
    return [
        f"{len(halved)} float layer weight(s) stored in half precision, every value exact (loaded "
        f"back as the same float32): {', '.join(halved)}; the folder is {saved} bytes below "
        "quantbalance's size count, which counts float layers at float32"
    ]


@register("compressed-tensors")
def write_compressed_tensors(
    qmodel: nn.Module,
    path: Path,
    *,
    source: str | Path | None = None,
    tokenizer: Any = None,
    fallback: Literal["error", "float"] = "error",
    overwrite: bool = False,
    widen: bool = True,
) -> ExportResult:
    """Write ``qmodel`` as a compressed-tensors Hugging Face folder.

    Args:
        qmodel: a quantized Hugging Face model (``qb.quantize`` of e.g. ``LlamaForCausalLM``).
        path: the folder to create (written atomically).
        source: the float model's folder: tokenizer and generation files are copied from it.
        tokenizer: alternatively, a tokenizer object to save into the folder.
        fallback: ``error`` (a layer with no form raises :class:`NoFormError`) or ``float`` (store
            such a weight-only layer dequantized, exactly as simulated, and say so in notes).
        overwrite: replace an existing folder.
        widen: when the Plan mixes bit widths of symmetric integer weights with a quantized
            embedding, store every layer's codes at the widest width in one config group (the
            same values, more bytes; said in notes), because Transformers 5.24 cannot load such
            a mix as separate groups exactly. False keeps one group per scheme and says loudly
            that Transformers cannot load it exactly.

    Returns:
        The ExportResult (``layers``: the format of each quantized layer, or ``float``).
    """
    # deferred: compressed_tensors is an optional extra
    from compressed_tensors.quantization import QuantizationConfig

    if fallback not in ("error", "float"):
        raise ConfigError(f"fallback={fallback!r}; accepted: 'error', 'float'")
    cfg = hf_config(qmodel, "compressed-tensors")
    tensors = float_tensors(qmodel)
    schemes: dict[str, Any] = {}
    layers: dict[str, str] = {}
    notes: list[str] = []
    bits = _widen_to(qmodel) if widen else None
    for name, m in quant_modules(qmodel):
        try:
            schemes[name], packed, layers[name] = _layer(name, m, bits)
        except NoFormError as e:
            if fallback == "error" or m.input_quantizer is not None:
                raise
            packed, layers[name] = {"weight": m.weight.detach().float().contiguous()}, "float"
            notes.append(f"{e}: stored as float (dequantized, lossless w.r.t. the simulation)")
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in packed.items()})
    tied = embeddings_tied(qmodel)
    ignore = [
        n for n, m in qmodel.named_modules()
        if isinstance(m, nn.Linear | nn.Embedding | QuantModule) and n not in schemes
    ]  # fmt: skip
    halved = _halve_float_layers(tensors, ignore)
    groups, fmt = _config_groups(schemes)
    if bits is not None:
        narrow = sorted({m.qweight.scheme.bits for _, m in quant_modules(qmodel)} - {bits})
        notes.append(
            f"{'/'.join(map(str, narrow))}-bit layers stored as {bits}-bit codes in one config "
            "group (the same values, more bytes): Transformers 5.24 cannot load a mix of bit "
            "widths with quantized embeddings exactly; widen=False keeps one group per scheme"
        )
    notes += _loading_notes(qmodel, groups) + halved
    qcfg = QuantizationConfig(
        config_groups=groups, format=fmt, quantization_status="compressed", ignore=ignore
    )
    config = cfg.to_dict()
    config["tie_word_embeddings"] = tied
    config["quantization_config"] = qcfg.model_dump(mode="json", exclude_none=True)
    plan = getattr(qmodel, "qb_plan", None)

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        copied = copy_source_files(source, tmp, tokenizer)
        if not any(c.startswith("tokenizer") for c in copied):
            notes.append("no tokenizer written: pass source= (HF folder) or tokenizer=")
        if plan is not None:
            (tmp / "quantbalance_plan.json").write_text(plan.to_json())

    out = atomic_folder(path, fill, overwrite=overwrite)
    return ExportResult("compressed-tensors", out, file_sizes(out), notes, layers)
