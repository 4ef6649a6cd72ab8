"""Hugging Face models by architecture: ``AutoConfig`` picks the ``AutoModelFor...`` class.

Models load from a local folder or the local Hugging Face cache only (``local_files_only``: no
download ever happens, whatever ``HF_HUB_OFFLINE`` says). A checkpoint whose weights do not
cover the model (missing, newly initialised or shape-mismatched tensors) is refused with a
:class:`~quantbalance.errors.ModelLoadError` instead of quietly becoming a random model.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.errors import AssetMissingError, ConfigError, ModelLoadError
from quantbalance.frontends.pooling import MeanPooling

log = logging.getLogger(__name__)

#: Model kinds: the ``transformers`` auto class each loads with, and the family of its output
#: (one of ``evaluate.fidelity.FAMILIES``).
_KIND_TABLE = {
    "causal-lm": ("AutoModelForCausalLM", "lm"),
    "masked-lm": ("AutoModelForMaskedLM", "logits"),
    "sequence-classification": ("AutoModelForSequenceClassification", "logits"),
    "token-classification": ("AutoModelForTokenClassification", "logits"),
    "sentence-embedding": ("AutoModel", "embedding"),
    "image-classification": ("AutoModelForImageClassification", "logits"),
    "speech-seq2seq": ("AutoModelForSpeechSeq2Seq", "logits"),
}
AUTO_CLASSES = {kind: auto for kind, (auto, _) in _KIND_TABLE.items()}
FAMILY_OF_KIND = {kind: family for kind, (_, family) in _KIND_TABLE.items()}
KINDS = tuple(AUTO_CLASSES)
# Architecture-name endings -> kind (checked in order; the first match wins).
_SUFFIXES = (
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
    ("ForMaskedLM", "masked-lm"),
    ("ForSequenceClassification", "sequence-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForSpeechSeq2Seq", "speech-seq2seq"),
)
_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


@dataclass
class HFModel:
    """A float Hugging Face model ready for quantbalance.

    Attributes:
        model: the float32 model in eval mode (a ``MeanPooling`` wrapper for sentence embedding).
        kind: one of :data:`KINDS`.
        processor: the tokenizer (text), image processor (vision) or processor (speech); None
            when the folder has none.
        config: the ``transformers`` config.
        path: the local folder the weights came from.
        name: the folder name or hub id, for reports.
        info: facts for reports (architecture, parameters, loaded tensors).
    """

    model: nn.Module
    kind: str
    processor: Any
    config: Any
    path: Path
    name: str
    info: dict[str, Any] = field(default_factory=dict)


def from_pretrained(path_or_id: str | Path, task: str | None = None) -> HFModel:
    """Load a Hugging Face model by its architecture, with its tokenizer or image processor.

    Args:
        path_or_id: a local model folder, or a hub id already in the local cache.
        task: force a kind (one of :data:`KINDS`); default: from ``config.architectures``
            (a sentence-transformers folder, or a bare ``...Model``, is a sentence embedding).

    Returns:
        The :class:`HFModel`.

    Raises:
        AssetMissingError: transformers is not installed, the id is not in the local cache,
            or the folder holds no weights.
        ModelLoadError: the architecture is unknown, or the checkpoint leaves tensors missing,
            newly initialised or mismatched.
        ConfigError: ``task`` is not a known kind.

    Example:
        >>> hf = from_pretrained("path/to/llama-folder")  # doctest: +SKIP
        >>> hf.kind, type(hf.model).__name__  # doctest: +SKIP
        ('causal-lm', 'LlamaForCausalLM')
    """
    try:
        import transformers  # deferred: transformers is an optional extra
    except ImportError as exc:
        raise AssetMissingError(
            "--hf needs the PyPI package 'transformers'; install it with: "
            "pip install 'quantbalance[tasks]' (or pip install transformers)"
        ) from exc
    folder = resolve_folder(path_or_id)
    if task is not None and task not in KINDS:
        raise ConfigError(f"task={task!r}; accepted: {', '.join(KINDS)}")
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    kind = task or infer_kind(config, folder)
    auto = getattr(transformers, AUTO_CLASSES[kind])
    with _quiet_transformers():
        try:
            model, loading = auto.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32
            )
        except ValueError as exc:  # the auto class has no mapping for this config
            raise ModelLoadError(
                f"{path_or_id}: {AUTO_CLASSES[kind]} cannot load a {type(config).__name__} "
                f"({exc}); accepted kinds: {', '.join(KINDS)}"
            ) from None
    check_loading(model, loading, str(path_or_id))
    model = _prepare(model, kind, folder)
    n_params = sum(p.numel() for p in model.parameters())
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    log.info("loaded %s as %s (%s, %d parameters)", path_or_id, kind, arch, n_params)
    return HFModel(
        model=model,
        kind=kind,
        processor=_processor(folder, kind),
        config=config,
        path=folder,
        name=Path(str(path_or_id)).name or str(path_or_id),
        info={"architecture": arch, "kind": kind, "parameters": n_params, "path": str(folder)},
    )


def resolve_folder(path_or_id: str | Path) -> Path:
    """The local folder of a model: the path itself, or the hub id's snapshot in the cache.

    Args:
        path_or_id: a folder or a hub id (``org/name``).

    Returns:
        A folder holding ``config.json`` and weights.

    Raises:
        AssetMissingError: no such folder and no cached snapshot, or no weights in it.
    """
    path = Path(path_or_id)
    if path.is_dir():
        folder = path
    elif path.exists():
        raise ConfigError(f"--hf {path_or_id}: a file; give the model's folder or a hub id")
    else:
        folder = _cached_snapshot(str(path_or_id))
    if not (folder / "config.json").is_file():
        raise AssetMissingError(
            f"{path_or_id}: no config.json in {folder}; give a Hugging Face model folder"
        )
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_FILES):
        raise AssetMissingError(
            f"{path_or_id}: no weights in {folder} (looked for {', '.join(_WEIGHT_FILES)}); "
            "refusing to build a randomly initialised model"
        )
    return folder


def _cached_snapshot(repo_id: str) -> Path:
    # deferred: huggingface_hub comes with the optional transformers
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise AssetMissingError(
            f"{repo_id!r} is neither a local folder nor in the local Hugging Face cache; "
            "quantbalance never downloads: fetch it first (hf download "
            f"{repo_id}) or give a folder"
        ) from None


def infer_kind(config: Any, folder: Path) -> str:
    """Which model kind a config describes.

    Args:
        config: a ``transformers`` config.
        folder: its folder (a sentence-transformers ``modules.json`` there means mean pooling).

    Returns:
        One of :data:`KINDS`.

    Raises:
        ModelLoadError: the architecture does not name a supported kind.
    """
    archs = list(getattr(config, "architectures", None) or [])
    if _is_sentence_transformer(folder):
        return "sentence-embedding"
    for arch in archs:
        for suffix, kind in _SUFFIXES:
            if arch.endswith(suffix):
                return kind
        if arch.endswith("ForConditionalGeneration") and _is_speech_seq2seq(config):
            return "speech-seq2seq"
        if arch.endswith("Model") and "For" not in arch:
            return "sentence-embedding"
    raise ModelLoadError(
        f"architectures {archs or '(none in config.json)'}: no supported kind; pass "
        f"task= / --hf-task one of {', '.join(KINDS)}"
    )


def _is_sentence_transformer(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    try:
        entries = json.loads(modules.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return any("Pooling" in str(e.get("type", "")) for e in entries if isinstance(e, dict))


def _is_speech_seq2seq(config: Any) -> bool:
    # deferred: transformers is an optional extra
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES


def check_loading(model: nn.Module, loading: dict[str, Any], where: str) -> None:
    """Refuse a model whose checkpoint did not fill it.

    Args:
        model: the model transformers built.
        loading: its ``output_loading_info`` dict (``missing_keys``, ``mismatched_keys``,
            ``error_msgs``).
        where: the path or id, for the message.

    Raises:
        ModelLoadError: any tensor missing (newly initialised), mismatched, or an error message.
    """
    missing = sorted(loading.get("missing_keys") or [])
    mismatched = sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in loading.get("mismatched_keys") or []
    )
    errors = list(loading.get("error_msgs") or [])
    if not (missing or mismatched or errors):
        return
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    fresh = sum(params[k].numel() for k in missing + mismatched if k in params)
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing from the checkpoint ({', '.join(missing[:4])}"
                     f"{', ...' if len(missing) > 4 else ''})")  # fmt: skip
    if mismatched:
        parts.append(f"{len(mismatched)} with mismatched shapes ({', '.join(mismatched[:4])})")
    if errors:
        parts.append(f"errors: {'; '.join(errors)[:300]}")
    raise ModelLoadError(
        f"{where}: {'; '.join(parts)} would be newly initialised "
        f"({100 * fresh / max(total, 1):.1f} % of {total} parameters); refusing to quantize a "
        "partly random model. Check the folder's weights, or pass the task its checkpoint "
        "was trained for"
    )


def _prepare(model: nn.Module, kind: str, folder: Path) -> nn.Module:
    model = model.float().eval()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False  # logits only, no key/value caches in the outputs
    if kind == "sentence-embedding":
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # mean pooling replaces it; unused layers would be searched
        modules = folder / "modules.json"
        normalize = modules.is_file() and "Normalize" in modules.read_text()
        return MeanPooling(model, normalize=normalize).eval()
    return model


def _processor(folder: Path, kind: str) -> Any:
    import transformers  # deferred: transformers is an optional extra

    name = {"image-classification": "AutoImageProcessor", "speech-seq2seq": "AutoProcessor"}.get(
        kind, "AutoTokenizer"
    )
    try:
        with _quiet_transformers():
            return getattr(transformers, name).from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s: no %s (%s); give tensors as data", folder, name, exc)
        return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own load report and progress bars off: check_loading says what matters."""
    # deferred: transformers is an optional extra
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
