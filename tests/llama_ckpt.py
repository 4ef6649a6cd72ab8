"""A synthetic Llama-shaped Hugging Face checkpoint (random weights) for offloading tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_llama_checkpoint(
    folder: Path,
    layers: int = 24,
    hidden: int = 128,
    intermediate: int = 256,
    vocab: int = 256,
    dtype: torch.dtype = torch.float32,
    shard: str = "2MB",
    seed: int = 0,
) -> Path:
    """Write a random ``LlamaForCausalLM`` with ``save_pretrained`` (safetensors shards).

    Args:
        folder: target folder.
        layers: decoder blocks.
        hidden: hidden size (heads of 32 channels, half as many key/value heads).
        intermediate: MLP size.
        vocab: vocabulary size.
        dtype: parameter dtype.
        shard: ``max_shard_size`` (small: several shards even for a small model).
        seed: random seed.

    Returns:
        The folder.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads = max(hidden // 32, 2)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in ``dtype`` directly: no float32 copy of a big model
    try:
        model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():  # HF initialises with std 0.02: spread the weights a little more
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    model.save_pretrained(folder, max_shard_size=shard, safe_serialization=True)
    return folder


def calib_batches(n: int = 4, seq: int = 32, vocab: int = 256, seed: int = 1) -> list[dict]:
    """Random token batches (``input_ids`` of shape (1, seq)).

    Args:
        n: batches.
        seq: tokens per batch.
        vocab: vocabulary size.
        seed: random seed.

    Returns:
        The batches.
    """
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (1, seq), generator=g)} for _ in range(n)]
