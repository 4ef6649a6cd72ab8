"""``nn.MultiheadAttention`` as the four linear layers it is made of.

``nn.MultiheadAttention`` keeps its query/key/value projections as one ``in_proj_weight``
parameter and reads its ``out_proj`` weight inside ``F.multi_head_attention_forward``: none of
them is a layer that is ever *called*, so none could be quantized (a third of a transformer
encoder's weights left float). :func:`split_attention` replaces each such module, in place, by
:class:`LinearMultiheadAttention`: the same computation from ``q_proj``, ``k_proj``, ``v_proj``
and ``out_proj`` ``nn.Linear`` layers (weights copied from the module) and PyTorch's
``scaled_dot_product_attention``, so every projection is quantized, calibrated, searched,
exported and deployed like any other Linear (the approach of ``torch.ao.nn.quantizable``'s
MultiheadAttention).

Supported: every argument of ``forward`` (batch-first or not, unbatched inputs, key padding and
attention masks, boolean or additive, ``need_weights`` averaged or per head, ``is_causal``),
separate key/value dimensions, dropout in training, ``add_bias_kv`` (the learnt key/value
biases appended to the keys and values, kept float: two ``embed_dim`` vectors) and
``add_zero_attn`` (a zero key/value appended per head), masks padded as PyTorch pads them.
Subclasses of ``nn.MultiheadAttention`` may compute something else: they are left as they are
(their ``out_proj`` is reported as unsupported by the coverage check).

The replacement keeps the attributes ``nn.TransformerEncoderLayer`` reads before choosing its
fused fast path (``batch_first``, ``num_heads``, ``in_proj_weight``/``in_proj_bias``,
``_qkv_same_embed_dim``) and carries a no-op forward pre-hook, so such a layer always takes its
ordinary path through it; an ``nn.TransformerEncoder`` holding one stops using nested tensors for
padded batches (PyTorch's optimisation, which also leaves padded positions' outputs at 0: they are
computed instead, as in training mode; unpadded positions are unchanged).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantbalance.transform.swap import replace_module

log = logging.getLogger(__name__)


def _runs_its_forward(_module: nn.Module, _args: tuple[Any, ...]) -> None:
    """No-op pre-hook: fused parents (TransformerEncoderLayer) then call this module."""


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)  # fmt: skip
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


class LinearMultiheadAttention(nn.Module):
    """Multi-head attention computed from four ``nn.Linear`` layers (see the module docstring).

    Args:
        mha: the ``nn.MultiheadAttention`` to copy (left untouched).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.head_dim = e, mha.num_heads, mha.head_dim
        self.kdim, self.vdim = mha.kdim, mha.vdim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        self._qkv_same_embed_dim = mha._qkv_same_embed_dim
        b = mha.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.detach().chunk(3)
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
        else:
            wq, wk, wv = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(),
                          mha.v_proj_weight.detach())  # fmt: skip
        self.q_proj, self.k_proj, self.v_proj = _linear(wq, bq), _linear(wk, bk), _linear(wv, bv)
        out = mha.out_proj
        self.out_proj = _linear(
            out.weight.detach(), None if out.bias is None else out.bias.detach()
        )
        self.bias_k = None if mha.bias_k is None else nn.Parameter(mha.bias_k.detach().clone())
        self.bias_v = None if mha.bias_v is None else nn.Parameter(mha.bias_v.detach().clone())
        self.add_zero_attn = mha.add_zero_attn
        self.train(mha.training)
        self.register_forward_pre_hook(_runs_its_forward)

    @property
    def in_proj_weight(self) -> torch.Tensor:
        """The three projections' weights, concatenated (same embedding sizes only)."""
        return torch.cat([m.weight for m in (self.q_proj, self.k_proj, self.v_proj)])

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        """The three projections' biases, concatenated (as ``nn.MultiheadAttention`` has it)."""
        biases = [m.bias for m in (self.q_proj, self.k_proj, self.v_proj)]
        return None if any(b is None for b in biases) else torch.cat(biases)  # type: ignore[arg-type]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward``'s arguments and results.

        Args:
            query: ``(L, N, E)`` (``(N, L, E)`` if batch-first, ``(L, E)`` unbatched).
            key: ``(S, N, kdim)`` likewise.
            value: ``(S, N, vdim)`` likewise.
            key_padding_mask: ``(N, S)``: True (or -inf) where a key is padding.
            need_weights: also return the attention weights.
            attn_mask: ``(L, S)`` or ``(N·heads, L, S)``: True (or -inf) where not allowed.
            average_attn_weights: average the returned weights over heads.
            is_causal: a causal mask (used when ``attn_mask`` is not given).

        Returns:
            ``(output, weights or None)`` shaped as ``nn.MultiheadAttention`` returns them.
        """
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, n, _ = query.shape
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim

        def heads(x: torch.Tensor, length: int) -> torch.Tensor:  # (len, N, E) -> (N, h, len, d)
            return x.reshape(length, n * h, d).transpose(0, 1).reshape(n, h, length, d)

        q = heads(self.q_proj(query), tgt)
        k, v, extra = self._keys_values(self.k_proj(key), self.v_proj(value), heads)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, q.dtype, n, tgt, src)
        if mask is not None and extra:  # appended keys are visible to every query
            mask = F.pad(mask, (0, extra))
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * d**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            attn = F.dropout(weights, p) if p > 0 else weights
            ctx = attn @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            weights = None
        ctx = ctx.permute(2, 0, 1, 3).reshape(tgt, n, self.embed_dim)
        out = self.out_proj(ctx)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _keys_values(
        self, k: torch.Tensor, v: torch.Tensor, heads: Any
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Projected ``(S, N, E)`` keys/values with the extra bias and zero keys, per head.

        Returns:
            ``(keys, values, number of appended keys)``, heads shaped ``(N, h, S', d)``.
        """
        n, extra = k.shape[1], 0
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(1, n, -1)])
            v = torch.cat([v, self.bias_v.expand(1, n, -1)])
            extra += 1
        k, v = heads(k, k.shape[0]), heads(v, v.shape[0])
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(*k.shape[:2], 1, k.shape[3])], dim=2)
            v = torch.cat([v, v.new_zeros(*v.shape[:2], 1, v.shape[3])], dim=2)
            extra += 1
        return k, v, extra

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        dtype: torch.dtype,
        n: int,
        tgt: int,
        src: int,
    ) -> torch.Tensor | None:
        """One additive ``(N, heads, L, S)``-broadcastable mask from the given ones."""

        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -torch.inf)
            return m.to(dtype)

        mask = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool).triu(1)
        if attn_mask is not None:
            m = additive(attn_mask)
            mask = m.reshape(n, self.num_heads, tgt, src) if m.dim() == 3 else m
        if key_padding_mask is not None:
            kp = additive(key_padding_mask).reshape(n, 1, 1, src)
            mask = kp if mask is None else mask + kp
        return mask


def split_attention(model: nn.Module) -> list[str]:
    """Replace every supported ``nn.MultiheadAttention`` of ``model`` in place.

    Args:
        model: any model.

    Returns:
        The names of the replaced modules (their projections become ``<name>.q_proj``, ...).
    """
    done = []
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.MultiheadAttention:
            replace_module(model, name, LinearMultiheadAttention(mod))
            done.append(name)
    for mod in model.modules():  # its nested-tensor path would hand the split layers nested
        if isinstance(mod, nn.TransformerEncoder) and done:  # tensors (padded outputs: 0)
            mod.use_nested_tensor = False
    if done:
        log.info("MultiheadAttention as linear layers: %s", ", ".join(done))
    return done

