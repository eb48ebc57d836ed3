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


# A rank whose iteration never ends, the launcher that started it, and above them a subreaper that SIGKILLs the
# launcher and collects the orphaned rank's exit status (init would reap it otherwise).
RANK = textwrap.dedent(
    """
    import os, time
    from metta.common.graceful_stop import GracefulStop
    stop = GracefulStop().install()
    print("watching", stop.watch_launcher(1.0, poll_s=0.05), flush=True)
    open(os.environ["RANK_READY"], "w").close()
    while not stop.requested:
        time.sleep(0.01)
    print("stop requested by", stop.signal_name, flush=True)
    time.sleep(60)  # an iteration that cannot finish (a peer is gone): the watch ends the process
    """
)
LAUNCHER = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', sys.argv[1]]); time.sleep(60)"
SUBREAPER = textwrap.dedent(
    """
    import ctypes, os, signal, subprocess, sys, time
    import psutil
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the launcher come here
    launcher = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
    while not psutil.Process(launcher.pid).children():
        time.sleep(0.05)
    rank = psutil.Process(launcher.pid).children()[0].pid
    while not os.path.exists(os.environ["RANK_READY"]):  # the rank is set up and watching
        time.sleep(0.05)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    _, status = os.waitpid(rank, 0)
    print("rank exit", os.waitstatus_to_exitcode(status), flush=True)
    """
)


def test_a_rank_whose_launcher_dies_asks_for_a_stop_and_exits_if_it_cannot_finish(tmp_path):
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "RANK_READY": str(tmp_path / "ready")}
    proc = subprocess.run(
        [sys.executable, "-c", SUBREAPER, LAUNCHER, RANK], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["watching True", "stop requested by the launcher's death", "rank exit 1"]
    assert "the torchrun launcher (pid" in proc.stderr and "exiting now without a final checkpoint" in proc.stderr
    env.pop("TORCHELASTIC_RUN_ID")
    assert not GracefulStop().watch_launcher(1.0)  # not under torchrun: nothing to watch
