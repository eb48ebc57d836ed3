"""Which form of the compute runs: the CPU's or the GPU's.

A few hot spots have two implementations, each the faster one on its device (an LSTM time step as
``nn.LSTM`` on a CPU and as ``torch.lstm_cell`` on a GPU; advantages by a compiled kernel on a CPU and in
torch ops on a GPU; the first convolution as a sparse product on a CPU and over a dense box on a GPU; a
rollout step in place on the vecenv's buffers on a CPU and as a static, graph-capturable step on a GPU).
``gpu_forms(device)`` says which one runs: the GPU forms off the CPU.

``gpu_forms_everywhere()`` makes every device run the GPU forms, eagerly where there is no GPU: the CPU test
suite checks them against the CPU forms that way, and ``benchmarks/host_overhead.py`` counts their ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_forced = False


def gpu_forms(device: torch.device | str) -> bool:
    """True when the compute on ``device`` takes its GPU forms (any device but the CPU, or inside
    ``gpu_forms_everywhere()``)."""
    return _forced or torch.device(device).type != "cpu"


@contextmanager
def gpu_forms_everywhere() -> Iterator[None]:
    """Run the GPU forms on every device while inside (on a CPU: eagerly, for tests and op counts)."""
    global _forced
    previous, _forced = _forced, True
    try:
        yield
    finally:
        _forced = previous
