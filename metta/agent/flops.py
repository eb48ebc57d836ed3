"""FLOPs of a policy call, for the benchmarks (``benchmarks/policy_flops.py``, ``benchmarks/train_sps.py``).

``counted_flops(fn)`` runs ``fn`` under ``torch.utils.flop_counter.FlopCounterMode`` with two corrections
for what metta's agent does: a sparse-times-dense product (``TokenConv``, the first convolution computed from
the tokens) costs ``2 * stored entries * columns``, not the dense shape's product, and its forward op
(``aten._sparse_addmm``) is counted at all. The counter does not see inside ``nn.LSTM``;
``lstm_forward_flops(agent)`` is that part per agent-step (times 3 with the backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _is_sparse(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.layout != torch.strided


def _mm_flops(a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    if _is_sparse(a):
        return 2 * a._nnz() * b.shape[1]
    if _is_sparse(b):
        return 2 * b._nnz() * a.shape[0]
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def _sparse_addmm_flops(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return _mm_flops(a, b)


_mm_flops._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes these the tensors, not shapes
_sparse_addmm_flops._get_raw = True  # type: ignore[attr-defined]


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn()`` runs, sparse products counted by their stored entries (LSTM excluded)."""
    with FlopCounterMode(
        display=False, custom_mapping={aten.mm: _mm_flops, aten._sparse_addmm: _sparse_addmm_flops}
    ) as counter:
        fn()
    return counter.get_total_flops()


def lstm_forward_flops(agent: torch.nn.Module) -> int:
    """Matrix-product FLOPs of the LSTM core for one agent-step (the gate nonlinearities are negligible)."""
    lstm = agent.components["_core_"].lstm
    flops, width = 0, lstm.input_size
    for _ in range(lstm.num_layers):
        flops += 2 * 4 * lstm.hidden_size * (width + lstm.hidden_size)
        width = lstm.hidden_size
    return flops
