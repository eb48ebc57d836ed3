"""Graceful stop on SIGTERM and SIGINT: finish the iteration in progress, checkpoint, exit 0.

    stop = GracefulStop().install()
    while agent_step < total:
        ...one iteration...
        if stop.should_stop(device):    # collective: every rank stops at the same iteration
            break
    ...final checkpoint, flush metrics...
    stop.uninstall()

The first SIGTERM or SIGINT only sets a flag; the loop sees it at the end of its iteration. A SIGINT that
comes ``repeat_window_s`` (1 s) or more after the first signal aborts at once without saving (a second Ctrl-C):
the process ends by SIGINT, and the run resumes from its last checkpoint. A SIGINT within the window is taken
for the same Ctrl-C delivered twice (a wrapper such as ``timeout`` forwards the signal its child also got)
and ignored; a repeated SIGTERM is ignored (schedulers repeat it, then send SIGKILL).

Under torch.distributed, ``should_stop`` all-reduces the flag (max) once per call, so a signal that reaches any
rank stops every rank after the same iteration. torchrun forwards the SIGTERM or SIGINT it receives to every
rank; the ranks then save and exit 0, while torchrun itself reports the signal it got.

Handlers go in only when ``install()`` is called, from the main thread; importing this module changes nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from metta.common.distributed import is_distributed

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS, repeat_window_s: float = 1.0):
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.repeat_window_s = float(repeat_window_s)
        self.signal_name: str | None = None  # the signal that asked for the stop (None: none yet)
        self._first_at: float | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        """A stop was asked for on this process (or, after ``should_stop`` said so, on any rank)."""
        return self.signal_name is not None

    def request(self, reason: str = "request") -> None:
        """Ask for a stop from code (the same as receiving a signal once)."""
        if self.signal_name is None:
            self.signal_name = reason
            self._first_at = time.monotonic()

    def install(self) -> GracefulStop:
        """Take over the signals (call from the main thread: Python runs signal handlers only there). Calling it
        again takes them back from anything that replaced the handlers in between (``uninstall`` still restores
        what was there before the first call)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                f"GracefulStop.install() was called from thread {threading.current_thread().name!r}; call it from "
                "the main thread, where Python delivers signals"
            )
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
            elif signal.getsignal(sig) != self._handle:  # a library took it over since: take it back
                signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers that were there before ``install``."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.request(name)
            logger.warning(
                "received %s: stopping after this iteration with a checkpoint (Ctrl-C again, a second or more "
                "later, aborts without saving)",
                name,
            )
            return
        if signum != signal.SIGINT or time.monotonic() - (self._first_at or 0.0) < self.repeat_window_s:
            logger.info("received %s again: already stopping", name)
            return
        logger.warning("second Ctrl-C: aborting now without saving; the run resumes from its last checkpoint")
        for handler in logging.getLogger().handlers:
            handler.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # end by the signal itself, as an unhandled Ctrl-C would

    def should_stop(self, device: torch.device | str | None = None) -> bool:
        """Whether to stop after this iteration; under torch.distributed every rank must call it (same answer).

        ``device`` is where the flag is all-reduced: the training device (NCCL needs CUDA tensors).
        """
        if not is_distributed():
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device or "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        # The answer is the reduced flag alone: a signal handled during the all-reduce counts at the next call,
        # on every rank alike.
        stop = bool(flag.item() > 0)
        if stop and not self.requested:
            self.request("a signal to another rank")
        return stop
