"""GracefulStop with real signals: the first asks for a stop, repeats are ignored, a later Ctrl-C aborts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

from metta.common.graceful_stop import GracefulStop


def test_first_signal_requests_a_stop_and_uninstall_restores_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = GracefulStop(repeat_window_s=60).install()
    try:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM" and stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)  # repeated SIGTERM: still stopping, nothing else
        os.kill(os.getpid(), signal.SIGINT)  # within the window: the same Ctrl-C delivered twice
        assert stop.signal_name == "SIGTERM"
    finally:
        stop.uninstall()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


ABORT = textwrap.dedent(
    """
    import os, signal
    from metta.common.graceful_stop import GracefulStop
    stop = GracefulStop(repeat_window_s=0.0).install()
    os.kill(os.getpid(), signal.SIGINT)
    print("requested", stop.requested, flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    print("still alive", flush=True)
    """
)


def test_a_second_ctrl_c_aborts_at_once():
    proc = subprocess.run([sys.executable, "-c", ABORT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGINT
    assert proc.stdout == "requested True\n"


def test_install_outside_the_main_thread_is_an_error():
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_install_error()), name="worker")
    thread.start()
    thread.join()
    assert "called from thread 'worker'; call it from the main thread" in errors[0]


def _install_error() -> str:
    try:
        GracefulStop().install()
    except RuntimeError as e:
        return str(e)
    return "no error"
