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

Under torchrun, ``watch_launcher(grace_s)`` also stops the run when the launcher itself dies (SIGKILL, the OOM
killer), which no signal reports to its ranks: a thread sees the process re-parented within a second and asks
for a stop, so every rank finishes the iteration, rank 0 saves and all exit, releasing the run's lock. A rank
still running ``grace_s`` later (its iteration cannot finish: a peer is gone or stuck) exits at once with
status 1, without a final checkpoint; the run resumes from the last one.

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
        self._watcher: threading.Thread | None = None

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

    def watch_launcher(self, grace_s: float, poll_s: float = 0.5) -> bool:
        """Under torchrun (``TORCHELASTIC_RUN_ID`` set), watch the launcher that started this process: when it is
        gone, ask for a stop, and exit with status 1 if this process still runs ``grace_s`` seconds later.
        Returns whether a watch was started (False outside torchrun, or when already watching)."""
        if grace_s <= 0:
            raise ValueError(f"grace_s={grace_s!r} must be a positive number of seconds")
        launcher = os.getppid()
        if "TORCHELASTIC_RUN_ID" not in os.environ or self._watcher is not None or launcher == 1:
            return False
        self._watcher = threading.Thread(
            target=self._watch, args=(launcher, float(grace_s), min(float(poll_s), grace_s / 4)), daemon=True
        )
        self._watcher.name = "metta-launcher-watch"
        self._watcher.start()
        return True

    def _watch(self, launcher: int, grace_s: float, poll_s: float) -> None:
        while os.getppid() == launcher:  # a process whose parent died is re-parented (to init or a subreaper)
            time.sleep(poll_s)
        logger.warning(
            "the torchrun launcher (pid %d) is gone: stopping after this iteration with a checkpoint; exiting "
            "without one if that takes more than %g s (trainer.worker_timeout_s)",
            launcher,
            grace_s,
        )
        self.request("the launcher's death")
        time.sleep(grace_s)
        logger.error(
            "still running %g s after the torchrun launcher died (another rank is gone or stuck): exiting now "
            "without a final checkpoint; the run resumes from its last one",
            grace_s,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)  # the kernel drops run.lock with the process; vecenv workers follow by their death signal

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
