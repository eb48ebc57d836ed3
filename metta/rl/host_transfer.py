"""Host-device transfers of the rollout step, for a GPU: the one packed upload and the one action download.

On a CPU the rollout works on the vecenv's buffers in place; the GPU form of the step (``metta.rl.rollout``)
uses them on any device (on a CPU, as plain memory copies).
"""

from __future__ import annotations

import numpy as np
import torch


class HostUpload:
    """Page-locked staging for one vecenv batch and its device copy: ``upload(start, o, r, d, t)`` packs the four
    arrays into one pinned buffer and starts one asynchronous copy, returning device views (the same tensors
    every time for a batch: ``device_views`` gives them before the first upload, for a CUDA graph to read).

    A batch's staging is refilled only after the CUDA event recorded behind its last copy has passed, so the
    host never overwrites memory a queued copy still has to read (each batch has its own staging, so with
    ``async_factor`` batches they take turns).
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
            cuda = self.device.type == "cuda"
            host = torch.empty(int(offsets[-1]), dtype=torch.uint8, pin_memory=cuda)
            dev = torch.empty(int(offsets[-1]), dtype=torch.uint8, device=self.device)

            def views(buf: torch.Tensor) -> tuple[torch.Tensor, ...]:
                return (
                    buf[: obs.nbytes].view(obs.shape),
                    buf[offsets[1] : offsets[2]].view(torch.float32),
                    buf[offsets[2] : offsets[3]].view(torch.bool),
                    buf[offsets[3] : offsets[4]].view(torch.bool),
                )

            host_np = tuple(v.numpy() for v in views(host))
            slot = (host, host_np, dev, views(dev), torch.cuda.Event() if cuda else None)
            self._slots[key] = slot
        return slot

    def device_views(self, start: int, obs: np.ndarray) -> tuple[torch.Tensor, ...]:
        """``(obs, rewards, terminals, truncations)`` on the device for the batch at ``start`` (``obs`` gives its
        shape)."""
        return self._slot(start, obs)[3]

    def upload(
        self, start: int, o: np.ndarray, r: np.ndarray, d: np.ndarray, t: np.ndarray
    ) -> tuple[torch.Tensor, ...]:
        host, host_np, dev, dev_views, copied = self._slot(start, o)
        if copied is not None:
            copied.synchronize()  # the last copy out of this staging has run
        for target, source in zip(host_np, (o, r, d, t)):
            np.copyto(target, source, casting="unsafe")
        dev.copy_(host, non_blocking=True)
        if copied is not None:
            copied.record()
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
