"""What the Hugging Face-style exports share: a model's float tensors, its config, the files
copied from the source folder, and a folder written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.errors import ConfigError, UnsupportedError
from quantbalance.nn import QuantAdd, QuantModule

#: Files taken over from the source folder (tokenizer and generation settings).
SOURCE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


def quant_modules(qmodel: nn.Module) -> Iterator[tuple[str, QuantModule]]:
    """The quantized layers of ``qmodel`` in model order.

    Args:
        qmodel: a quantized model.

    Yields:
        ``(name, module)``.

    Raises:
        UnsupportedError: the model quantizes its residual additions (``residual_activation``),
            which these weight formats cannot express.
    """
    adds = [n for n, m in qmodel.named_modules() if isinstance(m, QuantAdd)]
    if adds:
        raise UnsupportedError(
            f"the model quantizes {len(adds)} residual addition(s) ({adds[0]}, ...; Plan."
            "residual_activation), which Hugging Face and llama.cpp formats cannot express; "
            "export ONNX or a qb checkpoint, or quantize without residual_activation"
        )
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantModule):
            yield name, m


def float_tensors(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer outside the quantized layers, by state-dict name
    (quantized layers contribute only their bias); shared tensors appear once, first name wins.

    Args:
        qmodel: a quantized model.

    Returns:
        name -> tensor (detached).
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    skip: list[str] = []
    for name, m in qmodel.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        prefix = f"{name}." if name else ""
        if isinstance(m, QuantModule):
            skip.append(name)
            if m.bias is not None:
                out[prefix + "bias"] = m.bias.detach()
            continue
        local = list(m.named_parameters(recurse=False))
        transient = m._non_persistent_buffers_set
        local += [(k, b) for k, b in m.named_buffers(recurse=False) if k not in transient]
        for k, t in local:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            out[prefix + k] = t.detach()
    return out


def exact_half(t: torch.Tensor) -> torch.Tensor:
    """``t`` as bfloat16 (else float16) when every value survives the round trip bit for bit.

    A float32 weight that came from a bfloat16/float16 checkpoint stores in half the bytes with
    nothing lost: loading casts it back to the same float32 values. Otherwise ``t`` unchanged.

    Args:
        t: a float tensor.

    Returns:
        The half-size tensor holding exactly the same values, or ``t``.
    """
    if t.dtype != torch.float32:
        return t
    for half in (torch.bfloat16, torch.float16):
        h = t.to(half)
        if torch.equal(h.to(torch.float32).view(torch.int32), t.view(torch.int32)):
            return h
    return t


def hf_config(qmodel: nn.Module, what: str) -> Any:
    """The model's Hugging Face config (``qmodel.config``).

    Args:
        qmodel: a quantized Hugging Face model.
        what: the format name, for the error message.

    Returns:
        The ``PretrainedConfig``.

    Raises:
        UnsupportedError: the model carries no Hugging Face config.
    """
    cfg = getattr(qmodel, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise UnsupportedError(
            f"format={what!r} writes Hugging Face models; {type(qmodel).__name__} has no "
            "`.config` (quantize a transformers model, e.g. LlamaForCausalLM)"
        )
    return cfg


def embeddings_tied(qmodel: nn.Module) -> bool:
    """Whether the output projection still shares the input embedding's tensor.

    Quantizing only the embedding (or only the head) unties them: each is then stored.

    Args:
        qmodel: a Hugging Face causal LM.

    Returns:
        True if both exist and are the same tensor.
    """
    get_in = getattr(qmodel, "get_input_embeddings", None)
    get_out = getattr(qmodel, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return False
    emb, head = get_in(), get_out()
    if emb is None or head is None or isinstance(emb, QuantModule) or isinstance(head, QuantModule):
        return False
    return emb.weight is head.weight


def copy_source_files(source: str | Path | None, dest: Path, tokenizer: Any = None) -> list[str]:
    """Copy tokenizer and generation files from a source Hugging Face folder (or save
    ``tokenizer``) into ``dest``.

    Args:
        source: the float model's folder, or None.
        dest: the export folder.
        tokenizer: a tokenizer object with ``save_pretrained`` (used when ``source`` is None).

    Returns:
        Names of the files copied.

    Raises:
        ConfigError: ``source`` is not a folder.
    """
    copied: list[str] = []
    if source is not None:
        src = Path(source)
        if not src.is_dir():
            raise ConfigError(f"source={str(source)!r} is not a folder; give the HF model folder")
        for name in SOURCE_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
                copied.append(name)
    elif tokenizer is not None:
        tokenizer.save_pretrained(str(dest))
        kinds = ("tokenizer", "special")
        copied = sorted(p.name for p in dest.iterdir() if p.name.startswith(kinds))
    return copied


def atomic_folder(path: Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Write a folder atomically: ``fill(tmp)`` in a sibling temporary folder, then rename.

    Args:
        path: the folder to create.
        fill: writes the folder's contents into the temporary folder it is given.
        overwrite: replace an existing folder (only after ``fill`` succeeded).

    Returns:
        ``path``.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; choose a new folder or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
