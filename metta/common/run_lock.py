"""One writer per run directory: an exclusive ``flock`` on ``{run_dir}/run.lock``.

    lock = acquire_run_lock(dirs.run_dir)     # raises RunLockError when another process holds it
    ...
    lock.release()                            # or let the process end: the OS releases it

The lock belongs to the open file, so the kernel drops it when the holder dies in any way (SIGKILL included):
a killed run never blocks its own resume, and there is no stale-lock cleanup to get wrong. The file holds
the holder's pid and host (for the error message); it is left in place, emptied, on release. Under torchrun
only rank 0 takes the lock, and every rank learns whether it got it, so a refused launch stops all ranks.
Works on local filesystems and on NFS (where Linux maps ``flock`` to a byte-range lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

LOCK_FILE_NAME = "run.lock"


class RunLockError(RuntimeError):
    """The run directory is in use by another process (or the lock file cannot be opened)."""


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_FILE_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock now or raise ``RunLockError`` naming the run directory and the holder's pid."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunLockError(
                f"cannot open the lock file {self.path}: {e}; check that the directory is writable"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            raise RunLockError(
                f"run directory {self.run_dir} is in use by another process ({holder}); two runs writing one "
                "directory would interleave checkpoints and metrics. Wait for it to finish, stop it (SIGTERM "
                "saves a checkpoint), or choose another run name"
            ) from None
        except OSError as e:
            os.close(fd)
            raise RunLockError(
                f"cannot lock {self.path}: {e}; this filesystem may lack locks, use a local data_dir"
            ) from e
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _read_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            info = {}
        if "pid" not in info:
            return "pid not yet recorded"  # it took the lock a moment ago and is writing its pid
        return f"pid {info['pid']} on {info.get('host', '?')}, since {info.get('since', '?')}"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_run_lock(run_dir: str | os.PathLike) -> RunLock:
    """Lock ``run_dir`` for this run; collective under torch.distributed (call it on every rank).

    Rank 0 takes the lock and tells the others the outcome, so every rank raises the same ``RunLockError``
    when the directory is in use. Other ranks get an unheld ``RunLock``.
    """
    import torch.distributed as dist  # here, so that reading a lock (lock_holder) needs no torch

    from metta.common.distributed import is_distributed, is_master

    lock = RunLock(run_dir)
    error = None
    if is_master():
        try:
            lock.acquire()
        except RunLockError as e:
            error = str(e)
    if is_distributed():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise RunLockError(error)
    return lock


def lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """The process holding ``{run_dir}/run.lock`` as the file records it (``{"pid", "host", "since"}``), or None
    when no live process does: the file is absent or empty (released), or names a process of this host that has
    exited (killed: the kernel dropped its lock). A holder on another host is taken at its word. Reads the file
    only, so it never competes with a run taking the lock."""
    try:
        with open(os.path.join(os.fspath(run_dir), LOCK_FILE_NAME), "rb") as f:
            info = json.loads(f.read(4096) or b"{}")
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    if info.get("host") == socket.gethostname():
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, and another user's
    return info
