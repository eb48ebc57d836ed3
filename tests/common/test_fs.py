"""Atomic writes, their errors, temp-file cleanup, and the fault points that kill a write on purpose."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

from metta.common.fs import (
    WriteError,
    atomic_torch_save,
    atomic_write_text,
    remove_stale_temp_files,
    sha256_bytes,
    sha256_file,
    write_error,
)


def test_atomic_writes_replace_whole_files(tmp_path):
    path = str(tmp_path / "sub" / "a.txt")
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert open(path).read() == "two" and os.listdir(tmp_path / "sub") == ["a.txt"]
    atomic_torch_save({"x": torch.arange(3)}, str(tmp_path / "t.pt"))
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["x"], torch.arange(3))
    assert sha256_file(path) == sha256_bytes(b"two")


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    stale = tmp_path / "model_0001.pt.tmp.999999"
    own = tmp_path / f"model_0002.pt.tmp.{os.getpid()}"
    stale.write_bytes(b"partial")
    own.write_bytes(b"in flight")
    assert remove_stale_temp_files(str(tmp_path), "model_*") == [str(stale)]
    assert own.exists() and not stale.exists()


def test_a_failed_write_names_the_file_and_the_cause_and_leaves_no_temp_file(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(WriteError, match=r"cannot write .*taken: a directory has that name; move it aside") as err:
        atomic_write_text(str(tmp_path / "taken"), "x")
    assert isinstance(err.value, OSError) and err.value.filename == str(tmp_path / "taken")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    for code, words in (
        (errno.ENOSPC, "the disk is full (No space left on device); free space on the filesystem of"),
        (errno.EPERM, f"{tmp_path} is not writable (Operation not permitted)"),
        (errno.EROFS, f"{tmp_path} is not writable (Read-only file system)"),
    ):
        error = write_error(tmp_path / "model_0003.pt", OSError(code, os.strerror(code)))
        assert str(error).startswith(f"cannot write {tmp_path / 'model_0003.pt'}: {words}") and error.errno == code


def test_a_fault_armed_once_fires_in_one_process_only(tmp_path):
    """METTA_FAULT_ONCE: the first process to reach the point is killed there, a second (as torchrun restarts
    it, with the same environment) goes past."""
    code = "from metta.common.fault_points import fault_point; fault_point('write', 'model_0002.pt'); print('past')"
    env = {**os.environ, "METTA_KILL_AT": "write:model_*.pt", "METTA_FAULT_ONCE": str(tmp_path / "fired")}
    first, second = (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True) for _ in "12"
    )
    assert (first.returncode, first.stdout) == (-signal.SIGKILL, "")
    assert (second.returncode, second.stdout) == (0, "past\n") and (tmp_path / "fired").exists()
