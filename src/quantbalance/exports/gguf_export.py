"""``format="gguf"``: one GGUF file for llama.cpp, each weight in the ggml type it was simulated in.

Quantized layers must use GGML-native schemes (``quantbalance.formats.ggml.GGML_SCHEMES``: Q8_0,
Q5_0, Q4_0 bit-exact; Q5_1, Q4_1 within fp16 rounding of the block minimum); every tensor is
decoded again with the ``gguf`` package and compared with the simulation before the file is
written. Float tensors are F32 (exact) or, with ``float_type="f16"``, 2-D ones F16 (stated in the
notes). Beside the file, ``<name>.tensor-types.txt`` lists ``TENSOR=TYPE`` lines for users who
re-quantize a float GGUF with ``llama-quantize --tensor-type`` themselves.

Engine fact (stated in every result): llama.cpp's CPU kernels multiply quantized weights by
activations they quantize to 8-bit blocks on the fly (``Q8_0``/``Q8_K``); the weights are exactly
the simulated ones, the logits are not the float-activation simulation's (SmolLM2: KL ≈ 3e-3 per
token, perplexity within 1 %; an all-F32 export matches PyTorch).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from quantbalance.errors import ConfigError, UnsupportedError
from quantbalance.exports.gguf_blocks import check, encode
from quantbalance.exports.gguf_llama import (
    check_architecture,
    gguf_name,
    permute_rows,
    write_hparams,
)
from quantbalance.exports.gguf_vocab import write_vocab
from quantbalance.exports.hf_files import float_tensors, hf_config, quant_modules
from quantbalance.exports.registry import ExportResult, register
from quantbalance.io import atomic_write

ACTIVATION_NOTE = (
    "llama.cpp's CPU kernels quantize activations to 8-bit blocks for quantized weights; weights "
    "are bit-exact (or within fp16 rounding for Q4_1/Q5_1), logits differ from the "
    "float-activation simulation (SmolLM2: perplexity within 1 %)"
)
_FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "F16": 1, "F32": 0}

Tensor = tuple[str, np.ndarray, str]


def _quantized(
    qmodel: nn.Module, config: Any, fallback: str, notes: list[str], layers: dict[str, str]
) -> list[Tensor]:
    out: list[Tensor] = []
    n = config.num_hidden_layers
    for name, m in quant_modules(qmodel):
        hf = f"{name}.weight"
        qt = m.qweight
        try:
            kind, blocks = encode(qt, name)
        except UnsupportedError as e:
            if fallback == "error":
                raise
            values = m.weight.detach().float().numpy()
            out.append((gguf_name(hf, n), permute_rows(values, hf, config), "F32"))
            layers[name] = "F32"
            notes.append(f"{e}: stored as F32 (dequantized, lossless w.r.t. the simulation)")
            continue
        diff = check(qt, kind, blocks, name)
        if diff:
            notes.append(f"{name}: {kind} within {diff:.2g} of the simulation (fp16 block minimum)")
        out.append((gguf_name(hf, n), permute_rows(blocks, hf, config), kind))
        layers[name] = kind
    return out


def _floats(qmodel: nn.Module, config: Any, float_type: str) -> list[Tensor]:
    out: list[Tensor] = []
    for hf, t in float_tensors(qmodel).items():
        if hf.endswith("rotary_emb.inv_freq"):
            continue
        values = t.float().numpy()
        kind = "F16" if float_type == "f16" and values.ndim == 2 else "F32"
        values = values.astype(np.float16) if kind == "F16" else values
        out.append(
            (gguf_name(hf, config.num_hidden_layers), permute_rows(values, hf, config), kind)
        )
    return out


def _write(
    tmp: Path, config: Any, arch: str, tensors: list[Tensor], source: Path, pre: str
) -> None:
    import gguf  # deferred: gguf is an optional extra

    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(str(getattr(config, "_name_or_path", "") or "quantbalance model").split("/")[-1])
    write_hparams(w, config)
    write_vocab(w, source, config.vocab_size, pre)
    quant = Counter(k for _, _, k in tensors if k.startswith("Q"))
    main = quant.most_common(1)[0][0] if quant else "F32"
    w.add_file_type(_FILE_TYPES[main])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, values, kind in tensors:
        if kind.startswith("Q"):
            w.add_tensor(name, values, raw_dtype=gguf.GGMLQuantizationType[kind])
        else:
            w.add_tensor(name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@register("gguf")
def write_gguf(
    qmodel: nn.Module,
    path: Path,
    *,
    source: str | Path | None = None,
    tokenizer_pre: str = "default",
    float_type: Literal["f32", "f16"] = "f32",
    fallback: Literal["error", "float"] = "error",
    overwrite: bool = True,
) -> ExportResult:
    """Write ``qmodel`` (a quantized Llama-family model) as a GGUF file for llama.cpp.

    Args:
        qmodel: the quantized Hugging Face model.
        path: the ``.gguf`` file (written atomically).
        source: the float model's Hugging Face folder (its tokenizer is embedded).
        tokenizer_pre: llama.cpp's pre-tokenizer name (``smollm`` for SmolLM2).
        float_type: ``f32`` (exact) or ``f16`` for float 2-D tensors (smaller; stated in notes).
        fallback: ``error`` (a non-GGML scheme raises, naming the layer) or ``float`` (F32).
        overwrite: replace an existing file.

    Returns:
        The ExportResult (``layers``: each quantized layer's ggml type).
    """
    if float_type not in ("f32", "f16") or fallback not in ("error", "float"):
        raise ConfigError(
            f"float_type={float_type!r}, fallback={fallback!r}; accepted: f32|f16, error|float"
        )
    config = hf_config(qmodel, "gguf")
    arch = check_architecture(config)
    if source is None or not (Path(source) / "tokenizer.json").is_file():
        raise ConfigError("format='gguf' needs source= (the HF folder with tokenizer.json)")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass overwrite=True or choose another path")
    notes = [ACTIVATION_NOTE]
    layers: dict[str, str] = {}
    tensors = _quantized(qmodel, config, fallback, notes, layers)
    tensors += _floats(qmodel, config, float_type)
    if float_type == "f16":
        notes.append("float 2-D tensors stored as F16 (rounded from the simulated float32)")
    out = atomic_write(
        path, lambda tmp: _write(tmp, config, arch, tensors, Path(source), tokenizer_pre)
    )
    types = out.with_name(out.stem + ".tensor-types.txt")
    lines = [f"{n.replace('.', chr(92) + '.')}={k.lower()}" for n, _, k in tensors if k != "F32"]
    atomic_write(types, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    files = {out.name: out.stat().st_size, types.name: types.stat().st_size}
    return ExportResult("gguf", out, files, notes, layers)
