"""Sentence embeddings from any Hugging Face encoder: masked mean pooling (+ L2 normalisation)."""

from __future__ import annotations

import torch
from torch import nn


class MeanPooling(nn.Module):
    """Encoder + masked mean pooling over tokens (= ``SentenceTransformer.encode`` with a
    ``Pooling(mean)`` module), optionally L2-normalised (a ``Normalize`` module).

    Args:
        encoder: a ``transformers`` base model returning ``last_hidden_state``.
        normalize: L2-normalise the embeddings.
    """

    def __init__(self, encoder: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.config = getattr(encoder, "config", None)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: object
    ) -> torch.Tensor:
        """Embed a batch of tokenized texts.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L) 1 for real tokens, 0 for padding (all ones when omitted).
            **kwargs: other encoder inputs (``token_type_ids``, ...).

        Returns:
            (B, D) float32 embeddings.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.last_hidden_state.float()  # (B, L, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled
