"""What llama.cpp needs of a Llama-family model: hyper-parameters and tensor names/layouts.

Mirrors llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM``: the metadata keys of
``general.architecture = llama``, tensor names from the ``gguf`` package's own name map, and the
row permutation of ``q_proj``/``k_proj`` (Hugging Face's rotary layout -> GGML's interleaved
one). The permutation moves whole rows, so quantized block rows move unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantbalance.errors import UnsupportedError

#: Hugging Face ``model_type`` values written with the llama architecture.
ARCHITECTURES = {"llama": "llama"}


def check_architecture(config: Any) -> str:
    """The GGUF architecture of a Hugging Face config.

    Args:
        config: the model's ``PretrainedConfig``.

    Returns:
        ``"llama"``.

    Raises:
        UnsupportedError: another architecture.
    """
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise UnsupportedError(
            f"GGUF export supports model_type {sorted(ARCHITECTURES)}; this model is {kind!r}"
        )
    return ARCHITECTURES[kind]


def write_hparams(writer: Any, config: Any) -> None:
    """Add llama.cpp's hyper-parameter keys (``llama.*``).

    Args:
        writer: a ``gguf.GGUFWriter`` for architecture ``llama``.
        config: the Hugging Face ``LlamaConfig``.
    """
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", None):
        raise UnsupportedError(f"rope scaling {kind!r} is not written to GGUF; accepted: default")


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def gguf_name(hf_name: str, n_blocks: int) -> str:
    """The llama.cpp tensor name of a Hugging Face parameter name.

    Args:
        hf_name: e.g. ``model.layers.0.self_attn.q_proj.weight``.
        n_blocks: number of transformer blocks.

    Returns:
        e.g. ``blk.0.attn_q.weight``.

    Raises:
        UnsupportedError: a tensor llama.cpp's llama architecture has no place for.
    """
    import gguf  # deferred: gguf is an optional extra

    base, _, suffix = hf_name.rpartition(".")
    found = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks).get_name(base)
    if found is None:
        raise UnsupportedError(f"{hf_name}: no llama.cpp tensor for it in architecture llama")
    return f"{found}.{suffix}"


def permute_rows(rows: np.ndarray, hf_name: str, config: Any) -> np.ndarray:
    """Reorder the rows of ``q_proj``/``k_proj`` as llama.cpp's converter does.

    Args:
        rows: the tensor (float values or block bytes), first axis = output features.
        hf_name: its Hugging Face name.
        config: the model config.

    Returns:
        ``rows`` reordered (other tensors unchanged).
    """
    heads = config.num_attention_heads
    if hf_name.endswith("self_attn.k_proj.weight"):
        heads = getattr(config, "num_key_value_heads", None) or heads
    elif not hf_name.endswith("self_attn.q_proj.weight"):
        return rows
    n = rows.shape[0]
    return np.ascontiguousarray(
        rows.reshape(heads, 2, n // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
    )
