"""The run-directory lock: exclusive, names its holder, and freed by the OS when the holder is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from metta.common.run_lock import LOCK_FILE_NAME, RunLock, RunLockError, acquire_run_lock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from metta.common.run_lock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_one_holder_at_a_time_in_one_process(tmp_path):
    first = acquire_run_lock(tmp_path)
    assert first.held
    with pytest.raises(
        RunLockError, match=rf"run directory {tmp_path} is in use by another process \(pid {os.getpid()} "
    ):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path) as again:
        assert again.held
    assert (tmp_path / LOCK_FILE_NAME).read_text() == ""  # released locks leave no pid behind


def test_a_sigkilled_holder_never_blocks_the_directory(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockError, match=rf"\(pid {proc.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    RunLock(tmp_path).acquire().release()  # the lock file still names the dead pid; the lock itself is gone
