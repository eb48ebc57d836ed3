"""Weight-matrix diagnostics: singular-value statistics and effective rank of one layer's weight."""

from __future__ import annotations

import torch


def weight_matrix_metrics(weight: torch.Tensor, delta: float = 0.01) -> dict[str, float]:
    """Statistics of ``weight`` viewed as a matrix ``[out, in * kernel...]``.

    ``effective_rank`` is the number of largest singular values whose sum reaches ``1 - delta`` of the
    total: a layer whose rank collapses during training has stopped using part of its width.
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta={delta} must be in [0, 1)")
    w = weight.detach().float().reshape(weight.shape[0], -1).cpu()
    sv = torch.linalg.svdvals(w)
    total = float(sv.sum())
    if total > 0:
        cumulative = torch.cumsum(sv, 0) / total
        effective_rank = int(torch.searchsorted(cumulative, torch.tensor(1.0 - delta)).item()) + 1
    else:
        effective_rank = 0
    sv_min = float(sv[-1])
    return {
        "effective_rank": float(min(effective_rank, len(sv))),
        "sv_max": float(sv[0]),
        "sv_min": sv_min,
        "sv_mean": float(sv.mean()),
        "condition_number": float(sv[0] / sv_min) if sv_min > 0 else float("inf"),
        "frobenius_norm": float(torch.linalg.norm(w)),
        "avg_abs_weight": float(w.abs().mean()),
        "num_params": float(w.numel()),
    }
