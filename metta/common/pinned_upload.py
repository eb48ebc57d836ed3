"""``IndexUpload``: host-built int64 index arrays to the device in one asynchronous copy, without a host sync.

Index plans built on the host (an LSTM replay's layout, a minibatch's rows) go to the GPU every minibatch.
A copy from ordinary (pageable) memory makes the host wait for the device; from page-locked memory it is
queued like a kernel. The arrays are packed into one page-locked buffer and sent with one copy. Two buffers
take turns, each guarded by a CUDA event, so the host never refills a buffer whose copy has not run yet.

On the CPU nothing is copied: the arrays come back as tensors sharing their memory.
"""

from __future__ import annotations

import numpy as np
import torch


class IndexUpload:
    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._host: list[torch.Tensor | None] = [None, None]
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def __call__(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """``arrays`` (int64) as tensors on the device, in order; the device ones are views of one upload."""
        if self.device.type != "cuda":
            return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device) for a in arrays]
        sizes = [a.size for a in arrays]
        total = sum(sizes)
        turn = self._turn
        self._turn = 1 - turn
        event = self._events[turn]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer has run (it was queued a turn ago)
        host = self._host[turn]
        if host is None or host.numel() < total:
            host = torch.empty(max(total, 1024), dtype=torch.int64, pin_memory=True)
            self._host[turn] = host
        staging = host.numpy()
        offsets = np.cumsum([0, *sizes])
        for a, begin, end in zip(arrays, offsets[:-1], offsets[1:]):
            staging[begin:end] = a.reshape(-1)
        device = host[:total].to(self.device, non_blocking=True)
        if event is None:
            event = self._events[turn] = torch.cuda.Event()
        event.record()
        return [device[begin:end].view(a.shape) for a, begin, end in zip(arrays, offsets[:-1], offsets[1:])]
