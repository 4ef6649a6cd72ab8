"""A tiny random Llama saved as a Hugging Face folder (config, safetensors, BPE tokenizer).

Small enough for unit tests (two layers, hidden 64), shaped like SmolLM2 (grouped KV heads,
tied embeddings) so the compressed-tensors and GGUF exports meet the same cases.
"""

from __future__ import annotations

from pathlib import Path

import torch

_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "quantization maps floats to a few integer codes and a scale",
    "a small language model predicts the next token of a sentence",
] * 20


def make_tokenizer(folder: Path) -> int:
    """Train a byte-level BPE tokenizer on a few sentences and save it to ``folder``.

    Args:
        folder: where ``tokenizer.json`` and its config go.

    Returns:
        The vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(str(folder))
    return len(fast)


def make_tiny_llama(folder: Path, seed: int = 0, tie: bool = True) -> torch.nn.Module:
    """Build, save (``save_pretrained``) and return a tiny random ``LlamaForCausalLM``.

    Args:
        folder: the Hugging Face folder to write.
        seed: weights seed.
        tie: tie the embeddings and the output projection (as SmolLM2 does).

    Returns:
        The float model in eval mode.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(folder)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms away from 1 so a wrong norm mapping shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(folder), safe_serialization=True)
    model.config.use_cache = False
    return model


def token_batch(vocab: int, n: int = 2, length: int = 24, seed: int = 1) -> torch.Tensor:
    """Random token ids ``(n, length)``.

    Args:
        vocab: vocabulary size.
        n: sequences.
        length: tokens per sequence.
        seed: seed.

    Returns:
        int64 tensor.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g)
