"""Host-device transfers of the rollout step, for a GPU: the one packed upload and the one action download.

On a CPU neither is used: the rollout works on the vecenv's buffers in place.
"""

from __future__ import annotations

import numpy as np
import torch


class HostUpload:
    """Page-locked staging for one vecenv batch and its device copy: ``upload(o, r, d, t)`` packs the four
    arrays into one pinned buffer and starts one asynchronous copy, returning device views.

    A batch's staging is reused when that batch comes round again; by then the step that uploaded it has
    downloaded its actions, which waits for the copy, so the buffer is free.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._slots: dict[tuple[int, tuple[int, ...]], tuple] = {}

    def _slot(self, start: int, obs: np.ndarray) -> tuple:
        key = (start, obs.shape)
        slot = self._slots.get(key)
        if slot is None:
            n = obs.shape[0]
            obs_bytes = (obs.nbytes + 3) // 4 * 4  # rewards (float32) start 4-byte aligned
            sizes = (obs_bytes, 4 * n, n, n)
            offsets = np.cumsum((0, *sizes))
            pinned = self.device.type == "cuda"
            host = torch.empty(int(offsets[-1]), dtype=torch.uint8, pin_memory=pinned)
            dev = torch.empty(int(offsets[-1]), dtype=torch.uint8, device=self.device)

            def views(buf: torch.Tensor) -> tuple[torch.Tensor, ...]:
                return (
                    buf[: obs.nbytes].view(obs.shape),
                    buf[offsets[1] : offsets[2]].view(torch.float32),
                    buf[offsets[2] : offsets[3]].view(torch.bool),
                    buf[offsets[3] : offsets[4]].view(torch.bool),
                )

            host_np = tuple(v.numpy() for v in views(host))
            slot = (host, host_np, dev, views(dev))
            self._slots[key] = slot
        return slot

    def upload(
        self, start: int, o: np.ndarray, r: np.ndarray, d: np.ndarray, t: np.ndarray
    ) -> tuple[torch.Tensor, ...]:
        host, host_np, dev, dev_views = self._slot(start, o)
        for target, source in zip(host_np, (o, r, d, t)):
            np.copyto(target, source, casting="unsafe")
        dev.copy_(host, non_blocking=True)
        return dev_views


class ActionDownload:
    """The step's actions into a page-locked host buffer; the copy is the rollout step's one synchronisation."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._buffers: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, actions: torch.Tensor) -> np.ndarray:
        if actions.device.type == "cpu":
            return actions.to(torch.int32).numpy()
        buf = self._buffers.get(tuple(actions.shape))
        if buf is None:
            buf = torch.empty(actions.shape, dtype=torch.int32, pin_memory=actions.device.type == "cuda")
            self._buffers[tuple(actions.shape)] = buf
        cuda = actions.device.type == "cuda"
        buf.copy_(actions, non_blocking=cuda)
        if cuda:
            torch.cuda.current_stream(actions.device).synchronize()
        return buf.numpy()
