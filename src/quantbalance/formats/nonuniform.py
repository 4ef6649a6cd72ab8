"""Non-uniform codes: the NF4 table and k-means codebooks (one lookup table per block)."""

from __future__ import annotations

import torch

# NF4 (QLoRA): quantiles of N(0, 1) normalised to [-1, 1], with an exact zero.
NF4_TABLE = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230373382568, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)  # fmt: skip


def nearest_code(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of a sorted table, row by row.

    Args:
        values: ``(N, L)`` values.
        table: ``(N, K)`` or ``(K,)`` tables sorted ascending.

    Returns:
        int64 ``(N, L)`` indices into the table.
    """
    table = table.to(values.device)
    if table.dim() == 1:
        table = table.unsqueeze(0).expand(values.shape[0], -1)
    mids = (table[:, 1:] + table[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), values.contiguous())


def kmeans_codebook(
    blocks: torch.Tensor,
    n_codes: int,
    weights: torch.Tensor | None = None,
    iters: int = 30,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted 1-D k-means (Lloyd) per row, initialised at the row's quantiles.

    Assignment is a ``searchsorted`` on the midpoints of the sorted centroids, so memory is
    O(N·L), not O(N·L·K).

    Args:
        blocks: ``(N, L)`` values, one block per row.
        n_codes: codebook entries per block (``2**bits``).
        weights: optional ``(N, L)`` non-negative importance of each value (0 = ignore,
            e.g. padding of a partial group).
        iters: Lloyd iterations (stops early when nothing moves).

    Returns:
        ``(codebook, codes)``: ``(N, n_codes)`` sorted centroids and ``(N, L)`` int64 codes.
    """
    x = blocks.float()
    n, length = x.shape
    w = torch.ones_like(x) if weights is None else weights.float()
    srt = x.sort(dim=1).values
    ranks = torch.arange(n_codes, dtype=torch.float32, device=x.device)
    pos = ((ranks + 0.5) / n_codes * length).long()
    cent = srt[:, pos.clamp(max=length - 1)]
    for _ in range(iters):
        codes = nearest_code(x, cent)
        sums = torch.zeros(n, n_codes, device=x.device).scatter_add_(1, codes, w * x)
        cnt = torch.zeros(n, n_codes, device=x.device).scatter_add_(1, codes, w)
        new = torch.where(cnt > 0, sums / cnt.clamp(min=1e-30), cent).sort(dim=1).values
        if torch.equal(new, cent):
            break
        cent = new
    return cent, nearest_code(x, cent)
