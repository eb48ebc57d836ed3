"""Multiprocessing vecenv workers that die or stop answering, on real worker processes.

A dead worker surfaces as ``WorkerError`` naming the worker (on recv, send and call alike, never a raw
BrokenPipeError); a stopped worker (SIGSTOP) raises ``WorkerError`` after ``worker_timeout_s`` instead of
blocking for ever; afterwards every use raises ``WorkerError``, and close() leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from metta.interface import Environment
from metta.mettagrid.vecenv import DEFAULT_WORKER_TIMEOUT_S, WorkerError, make_vecenv

pytestmark = pytest.mark.timeout(120)  # a regression here is a hang: fail it instead of stalling the suite

CFG = {
    "game": {
        "num_agents": 2,
        "max_steps": 50,
        "map_builder": {
            "type": "random",
            "width": 8,
            "height": 8,
            "agents": 2,
            "objects": {"altar": 1},
            "border_width": 1,
        },
    },
    "desync_episodes": False,
}
ACTIONS = np.zeros((4, 2), np.int32)  # 2 envs x 2 agents


def gone(pid: int) -> bool:
    """The whole worker process has exited (every thread), so the kernel has closed its pipe ends.

    The worker is our child, so ``waitid(..., WNOWAIT)`` reports its exit without reaping it. /proc's zombie
    state is not enough: it shows the main thread's exit while another thread of the worker (numba's) may still
    be exiting and holding the pipe open, and a send then succeeds.
    """
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped (by close())
        return True


def wait_gone(pid: int) -> None:
    while not gone(pid):
        time.sleep(0.01)


def two_workers(**kwargs):
    vec = make_vecenv(CFG, "multiprocessing", num_envs=2, num_workers=2, **kwargs)
    vec.async_reset(0)
    return vec


def assert_unusable_then_closed(vec, pids: list[int]) -> None:
    for use in (vec.recv, lambda: vec.send(ACTIONS), lambda: vec.async_reset(1), lambda: vec.call("num_envs")):
        with pytest.raises(WorkerError, match="lost a worker .*close\\(\\) it and make a new one"):
            use()
    vec.close()
    vec.close()
    assert all(gone(pid) for pid in pids)


def test_worker_killed_before_send_raises_worker_error_on_send():
    vec = two_workers()
    pids = vec.worker_pids
    vec.recv()
    os.kill(pids[1], signal.SIGKILL)
    wait_gone(pids[1])
    with pytest.raises(
        WorkerError, match=rf"vecenv worker 1 \(pid {pids[1]}\) died during step: it was killed by SIGKILL"
    ):
        vec.send(ACTIONS)
    assert_unusable_then_closed(vec, pids)


def test_worker_killed_with_a_step_in_flight_raises_worker_error():
    vec = two_workers()
    pids = vec.worker_pids
    vec.recv()
    vec.send(ACTIONS)
    os.kill(pids[0], signal.SIGKILL)
    wait_gone(pids[0])
    # The step may have finished before the kill (its reply is still delivered): the next send then fails.
    with pytest.raises(WorkerError, match=rf"vecenv worker 0 \(pid {pids[0]}\) died during step"):
        for _ in range(2):
            vec.recv()
            vec.send(ACTIONS)
    assert_unusable_then_closed(vec, pids)


def test_worker_killed_before_a_call_or_reset_raises_worker_error():
    for use, what in ((lambda v: v.call("num_envs"), "call\\('num_envs'\\)"), (lambda v: v.async_reset(3), "reset")):
        vec = two_workers()
        pids = vec.worker_pids
        os.kill(pids[0], signal.SIGKILL)
        wait_gone(pids[0])
        with pytest.raises(WorkerError, match=rf"vecenv worker 0 \(pid {pids[0]}\) died during (step|{what})"):
            use(vec)
        assert_unusable_then_closed(vec, pids)


def test_stopped_worker_times_out_instead_of_blocking():
    vec = two_workers(worker_timeout_s=1.0)
    assert vec.worker_timeout_s == 1.0
    pids = vec.worker_pids
    vec.recv()
    os.kill(pids[0], signal.SIGSTOP)
    vec.send(ACTIONS)  # one byte into its pipe: sending never waits for the worker
    with pytest.raises(
        WorkerError,
        match=rf"vecenv worker 0 \(pid {pids[0]}\) did not answer step within 1 s and is alive but not answering",
    ):
        vec.recv()
    assert not gone(pids[0])  # still there, stopped: close() must deal with it
    assert_unusable_then_closed(vec, pids)


def test_stopped_worker_in_a_call_times_out_and_close_kills_it():
    vec = two_workers(worker_timeout_s=1.0)
    pids = vec.worker_pids
    os.kill(pids[1], signal.SIGSTOP)
    with pytest.raises(WorkerError, match=r"vecenv worker 1 .* did not answer"):
        vec.call("num_envs")
    assert_unusable_then_closed(vec, pids)


def test_stopped_worker_without_a_pending_reply_is_killed_by_close():
    vec = two_workers()
    pids = vec.worker_pids
    os.kill(pids[0], signal.SIGSTOP)  # close() cannot know: it asks, waits a little, then kills
    vec.close()
    assert all(gone(pid) for pid in pids)


def test_worker_exception_keeps_the_vecenv_usable():
    vec = two_workers()
    with pytest.raises(WorkerError, match=r"(?s)worker 0 failed during call\('no_such_method'\).*AttributeError"):
        vec.call("no_such_method")
    assert vec.call("num_envs") == [1, 1]
    vec.recv()
    vec.send(ACTIONS)
    vec.close()


def test_worker_timeout_setting_is_plumbed_and_checked():
    assert make_vecenv(CFG, "serial").worker_timeout_s == DEFAULT_WORKER_TIMEOUT_S == 60.0
    env = Environment(env_config=CFG, worker_timeout_s=7.5, num_envs=2, seed=0)
    assert env.worker_timeout_s == 7.5
    env.close()
    for bad in (0, -1, float("inf"), "60", True):
        with pytest.raises(ValueError, match=rf"worker_timeout_s={bad!r} must be a positive number of seconds"):
            make_vecenv(CFG, "multiprocessing", worker_timeout_s=bad)
