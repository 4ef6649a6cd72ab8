"""Transformer block structure: find a model's block list, capture and chain block calls.

Used by the block-by-block runner (:mod:`quantbalance.calibration.sequential`, which re-exports
the public names) and by algorithms that only need the block list (``find_blocks``):

* :func:`find_blocks`: the model's block list (data: :data:`BLOCK_PATHS`, else the largest
  ``nn.ModuleList``, else None);
* :func:`capture_block_inputs`: the first block's inputs (positional and keyword arguments, e.g.
  attention masks and position embeddings) once per batch, as :class:`BlockCall` s;
* :func:`as_call` / :func:`next_call`: a batch as a call of the whole model, and the next
  block's call from a block's output (:data:`HIDDEN_KWARGS`).

Control flow note: capturing the first block's inputs stops the forward pass by raising the
private :class:`_EarlyStopError` from a pre-hook (the rest of the model need not run); it is caught
in :func:`capture_block_inputs` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from quantbalance.calibration.batch import call_model
from quantbalance.calibration.pipeline import describe_batch
from quantbalance.errors import CalibrationError, QuantBalanceError, UnsupportedError

#: Where transformer families keep their block list (matched as the full name or a suffix).
BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma
    "encoder.layer",  # BERT, RoBERTa
    "transformer.h",  # GPT-2, Falcon
    "model.decoder.layers",  # OPT
    "gpt_neox.layers",  # Pythia
)
#: Keyword names under which a block may receive its hidden state.
HIDDEN_KWARGS: tuple[str, ...] = ("hidden_states", "hidden_state", "x")
#: Keyword arguments reset when a block is replayed (no KV cache across calibration runs).
#: Transformers 5 names the cache argument of a decoder layer ``cache``; older ones
#: ``past_key_value(s)``. Any other argument holding a key/value cache object is reset too
#: (see :func:`reset_kwargs`).
RESET_KWARGS: dict[str, Any] = {
    "past_key_values": None,
    "past_key_value": None,
    "cache": None,
    "layer_past": None,
    "use_cache": False,
}


def _is_kv_cache(value: Any) -> bool:
    """Whether ``value`` is a Transformers key/value cache (a ``cache_utils.Cache``)."""
    return any(
        c.__name__.endswith("Cache") and c.__module__.startswith("transformers.")
        for c in type(value).__mro__
    )


def reset_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A block's keyword arguments with every key/value cache removed.

    A block replayed with a cache argument appends its keys and values to it on every run: the
    second run (e.g. GPTQ's pass after quantizing a block) would attend over the first run's
    keys as well and hand the next block wrong inputs, and the caches of every block would stay
    resident for the whole run.

    Args:
        kwargs: the keyword arguments a block was called with.

    Returns:
        A copy with :data:`RESET_KWARGS` applied and any other cache-valued argument set to None.
    """
    out = {}
    for k, v in kwargs.items():
        if k in RESET_KWARGS:
            out[k] = RESET_KWARGS[k]
        elif _is_kv_cache(v):
            out[k] = None
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class BlockCall:
    """The arguments of one call of a block (one calibration batch)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _EarlyStopError(Exception):
    """Raised by the first block's pre-hook to end a capture pass early (see module notes)."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's list of transformer blocks.

    Args:
        model: any module.

    Returns:
        ``(name, ModuleList)`` for the first :data:`BLOCK_PATHS` entry found (as a full name or a
        suffix), else the non-empty ``ModuleList`` with the most parameters, else None.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> find_blocks(net) is None
        True
    """
    lists = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) and any(True for _ in m.parameters())
    }
    for path in BLOCK_PATHS:
        for name, mod in lists.items():
            if name == path or name.endswith("." + path):
                return name, mod
    if not lists:
        return None
    name = max(lists, key=lambda n: sum(p.numel() for p in lists[n].parameters()))
    return name, lists[name]


def _describe_error(i: int, batch: Any, e: Exception) -> CalibrationError:
    return CalibrationError(
        f"calibration batch {i} ({describe_batch(batch)}) does not fit the model: "
        f"{type(e).__name__}: {e}"
    )


def capture_block_inputs(
    model: nn.Module, block: nn.Module, batches: Sequence[Any]
) -> list[BlockCall] | None:
    """Record the arguments ``block`` receives for each batch, without running the rest.

    Args:
        model: the full model.
        block: its first block.
        batches: calibration batches (``call_model`` convention).

    Returns:
        One :class:`BlockCall` per batch (KV-cache arguments reset, see :data:`RESET_KWARGS`),
        or None if the model never calls ``block`` as a module.
    """
    calls: list[BlockCall] = []

    def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append(BlockCall(tuple(args), reset_kwargs(kwargs)))
        raise _EarlyStopError

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                try:
                    call_model(model, batch)
                except _EarlyStopError:
                    continue
                except (RuntimeError, TypeError, ValueError, IndexError) as e:
                    if isinstance(e, QuantBalanceError):
                        raise
                    raise _describe_error(i, batch, e) from e
                return None
    finally:
        handle.remove()
    return calls


def as_call(batch: Any) -> BlockCall:
    """A calibration batch as a call of the whole model (``call_model`` convention).

    Args:
        batch: one calibration batch (mapping: keyword arguments; tuple/list: positional;
            else the single positional argument).

    Returns:
        The :class:`BlockCall`.
    """
    if isinstance(batch, Mapping):
        return BlockCall((), dict(batch))
    if isinstance(batch, tuple | list):
        return BlockCall(tuple(batch), {})
    return BlockCall((batch,), {})


def next_call(call: BlockCall, output: Any) -> BlockCall:
    """The next block's call: this call with the hidden state replaced by ``output``.

    Args:
        call: the call that produced ``output``.
        output: the block's output (a tensor, or a tuple whose first item is the hidden state).

    Returns:
        The :class:`BlockCall` for the next block.

    Raises:
        UnsupportedError: the hidden state is neither the first positional argument nor one
            of :data:`HIDDEN_KWARGS`.
    """
    hidden = output if isinstance(output, torch.Tensor) else output[0]
    if call.args:
        return replace(call, args=(hidden, *call.args[1:]))
    for key in HIDDEN_KWARGS:
        if key in call.kwargs:
            return replace(call, kwargs={**call.kwargs, key: hidden})
    raise UnsupportedError(
        f"cannot find the hidden state among the block's arguments (keywords: "
        f"{sorted(call.kwargs)}); expected it first or as one of {HIDDEN_KWARGS}"
    )
