"""Crash-safe file writes and checksums.

A write is atomic: the bytes go to a temp file in the same directory, are fsynced, and the temp file is
renamed over the target with ``os.replace`` (atomic on POSIX and Windows), then the directory is fsynced so
the rename itself survives a power cut. A process killed at any moment (SIGKILL included) leaves either
the old file or the new one, plus at most a ``<name>.tmp.<pid>`` leftover that ``remove_stale_temp_files``
cleans up. A write that fails (disk full, a directory that is not writable, a directory where the file
should be) raises ``WriteError``, an ``OSError`` whose message names the file and the cause, and leaves the
old file as it was.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import os
from typing import Any

from metta.common.fault_points import fault_point

TEMP_MARKER = ".tmp."


class WriteError(OSError):
    """A file could not be written; ``str()`` names it and says why (``errno`` and ``filename`` are the cause's)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message alone, without "[Errno N] ...: 'path'"


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """``err``, raised while writing ``path``, as a ``WriteError`` that names ``path`` and the cause in words."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = f"the disk is full ({reason}); free space on the filesystem of {directory}"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = f"{directory} is not writable ({reason}); check its permissions, attributes and mount"
    elif err.errno == errno.EISDIR or os.path.isdir(path):
        cause = "a directory has that name; move it aside"
    elif err.errno == errno.EFBIG:
        cause = f"the file is larger than this process may write ({reason}; see ulimit -f)"
    else:
        cause = reason
    return WriteError(err.errno, f"cannot write {path}: {cause}", path)


def temp_path_for(path: str) -> str:
    """The temp name a write to ``path`` uses (same directory, so ``os.replace`` never crosses filesystems)."""
    return f"{path}{TEMP_MARKER}{os.getpid()}"


def fsync_dir(path: str) -> None:
    """Persist a directory entry (a rename or a delete); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open directories; its renames are durable enough for our purpose
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. certain network mounts) refuse fsync on directories
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """Flush a file written by someone else's code (e.g. ``PolicyStore.save``) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    tmp = temp_path_for(path)
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point("write", os.path.basename(path))
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err) from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically and durably."""
    import torch  # here, so that the plain file helpers load without torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def remove_stale_temp_files(directory: str, pattern: str = "*") -> list[str]:
    """Delete ``<pattern>.tmp.<pid>`` leftovers of writes killed midway; returns the removed paths.

    Temp files of this process are kept: one of its writes may be in flight on another thread.
    """
    removed = []
    own_suffix = f"{TEMP_MARKER}{os.getpid()}"
    for tmp in glob.glob(os.path.join(directory, f"{pattern}{TEMP_MARKER}*")):
        if tmp.endswith(own_suffix):
            continue
        try:
            os.remove(tmp)
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed
