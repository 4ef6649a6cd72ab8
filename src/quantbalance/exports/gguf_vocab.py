"""The tokenizer of a Hugging Face folder as GGUF metadata (byte-level BPE, ``gpt2`` model).

As llama.cpp's converter does for GPT-2-style BPE vocabularies: one entry per id up to the
model's vocabulary size (``[PAD<id>]`` placeholders beyond the tokenizer), special added tokens
as control tokens, merges and special ids from the folder (``gguf.SpecialVocab``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantbalance.errors import ConfigError


def write_vocab(writer: Any, folder: Path, vocab_size: int, pre: str) -> int:
    """Add ``tokenizer.ggml.*`` keys from the tokenizer in ``folder``.

    Args:
        writer: the ``gguf.GGUFWriter``.
        folder: a Hugging Face folder with ``tokenizer.json``.
        vocab_size: the model's vocabulary size (rows of the embedding).
        pre: llama.cpp's pre-tokenizer name (``smollm`` for SmolLM2, ``default``, ``llama-bpe``...).

    Returns:
        The number of tokens the tokenizer defines.

    Raises:
        ConfigError: no tokenizer in the folder, or more tokens than embedding rows.
    """
    # deferred: gguf and transformers are optional extras
    import gguf
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{folder}: no tokenizer.json; GGUF export needs the HF tokenizer")
    tok = AutoTokenizer.from_pretrained(str(folder))
    vocab = tok.get_vocab()
    if len(vocab) > vocab_size:
        raise ConfigError(f"tokenizer has {len(vocab)} tokens but the model only {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    special = set(tok.all_special_tokens)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif t in added:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)
    return len(vocab)
