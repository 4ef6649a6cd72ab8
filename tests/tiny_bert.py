"""A tiny BERT with the outlier channels of trained ones, shared by algorithm and deploy tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_bert(outliers: bool = True) -> nn.Module:
    """A 2-layer, 32-wide ``transformers.BertModel`` (eager attention), seeded.

    Args:
        outliers: raise a few LayerNorm weights and FFN biases, as in trained BERTs.

    Returns:
        The model in eval mode (the calling test skips if transformers is missing).
    """
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    if outliers:
        with torch.no_grad():
            for layer in bert.encoder.layer:
                layer.attention.output.LayerNorm.weight[:2] = 20.0
                layer.intermediate.dense.bias[:3] = 6.0
    return bert


def bert_batches(n: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of 4 × 12 random token ids with full attention masks.

    Args:
        n: number of batches.
        seed: generator seed.

    Returns:
        The batches.
    """
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, 50, (4, 12), generator=g) for _ in range(n)]
    return [{"input_ids": i, "attention_mask": torch.ones_like(i)} for i in ids]
