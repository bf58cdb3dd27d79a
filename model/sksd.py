"""Sliced kernelized Stein discrepancy (Gong, Li and Hernandez-Lobato, 2020).

Slices along the coordinate axes (projection directions r = g = e_i), a 1-d RBF
kernel per slice with a median-heuristic bandwidth, and the unbiased U-statistic,
so matched samples and target give a value near zero. Batched over rows: samples
[B, C, E] and the target's scores (d log p / d x) at those samples [B, C, E].
"""

from __future__ import annotations

import torch
from torch import Tensor


def sksd(samples: Tensor, scores: Tensor) -> Tensor:
    """SKSD per row [B] from C >= 2 samples per row."""
    c = samples.shape[-2]
    a = samples.unsqueeze(-2)  # [B, C, 1, E]
    b = samples.unsqueeze(-3)  # [B, 1, C, E]
    diff = a - b  # [B, C, C, E]
    sq = diff * diff
    with torch.no_grad():
        # Median heuristic per row and slice, over distinct pairs.
        off = ~torch.eye(c, dtype=torch.bool, device=samples.device)
        med = sq[..., off, :].median(dim=-2).values  # [B, E]
        h2 = (med / (2.0 * torch.log(torch.tensor(c + 1.0)))).clamp_min(1e-6)
    h2 = h2.unsqueeze(-2).unsqueeze(-2)  # [B, 1, 1, E]
    k = torch.exp(-sq / (2.0 * h2))
    dk_da = -diff / h2 * k
    dk_db = diff / h2 * k
    d2k = (1.0 / h2 - sq / (h2 * h2)) * k
    sa = scores.unsqueeze(-2)
    sb = scores.unsqueeze(-3)
    stein = sa * sb * k + sa * dk_db + sb * dk_da + d2k  # [B, C, C, E]
    off = (~torch.eye(c, dtype=torch.bool, device=samples.device)).to(samples.dtype)
    per_slice = (stein * off.unsqueeze(-1)).sum((-3, -2)) / (c * (c - 1))
    return per_slice.sum(-1)
