"""The vectorizer: protocol, shapes, serial == multiprocessing rollouts, async order, shutdown, errors.

Spawned workers import numba and the env (about a second each on 2 cores), so the multiprocessing tests
share one async vecenv where they can.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from metta.mettagrid.vecenv import WorkerError, make_vecenv, physical_cores, pin_plan, worker_cpus

AGENTS_PER_ENV = 2
MAX_STEPS = 15  # short episodes, so infos arrive within a few dozen steps

CFG = {
    "game": {
        "num_agents": AGENTS_PER_ENV,
        "max_steps": MAX_STEPS,
        "map_builder": {
            "type": "random",
            "width": 10,
            "height": 10,
            "agents": AGENTS_PER_ENV,
            "objects": {"altar": 2, "wall": 5},
            "border_width": 1,
        },
    },
    "desync_episodes": False,
}


def rollout(vecenv, steps: int, seed: int = 123):
    """Records of every recv over ``steps`` recv/send rounds with seeded random actions."""
    rng = np.random.default_rng(0)
    n_actions = len(vecenv.action_names)
    vecenv.async_reset(seed)
    records = []
    for _ in range(steps):
        obs, rewards, terminals, truncations, infos, env_ids, masks = vecenv.recv()
        records.append(
            {
                "env_ids": env_ids.copy(),
                "obs": obs.copy(),
                "rewards": rewards.copy(),
                "terminals": terminals.copy(),
                "truncations": truncations.copy(),
                "masks": masks.copy(),
                "infos": [(i["episode_length"], i["attributes"]["initial_grid_hash"]) for i in infos],
            }
        )
        actions = np.stack([rng.integers(0, n_actions, len(env_ids)), rng.integers(0, 4, len(env_ids))], axis=1).astype(
            np.int32
        )
        vecenv.send(actions)
    return records


def assert_same_rollouts(a, b):
    assert len(a) == len(b)
    for t, (ra, rb) in enumerate(zip(a, b)):
        for key in ra:
            if key == "infos":
                assert ra[key] == rb[key], f"step {t}: infos differ"
            else:
                np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"step {t}: {key} differs")


def children_of(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent has not reaped it yet).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------------------------------
# Serial backend


def test_serial_protocol_shapes_and_dtypes():
    vec = make_vecenv(CFG, "serial", num_envs=3, num_workers=1)
    assert (vec.num_envs, vec.batch_size, vec.num_workers) == (3, 3, 1)
    assert vec.num_agents == vec.agents_per_batch == 3 * AGENTS_PER_ENV
    assert vec.single_observation_space.shape == (200, 3)
    assert vec.single_action_space.nvec.tolist()[0] == len(vec.action_names)
    assert vec.max_action_args == vec.driver_env.max_action_args
    assert vec.driver_env.num_envs == 1
    assert "agent:group" in vec.get_observation_features() or len(vec.get_observation_features()) > 0

    obs, infos = vec.reset(seed=1)
    assert obs.shape == (6, 200, 3) and obs.dtype == np.uint8 and infos == []
    obs2, rewards, terminals, truncations, infos = vec.step(np.zeros((6, 2), dtype=np.int32))
    assert rewards.dtype == np.float32 and rewards.shape == (6,)
    assert terminals.dtype == np.bool_ and truncations.dtype == np.bool_
    assert obs2 is obs  # zero copy: the same shared buffer every step

    vec.send(np.zeros((6, 2), dtype=np.int64))  # any integer dtype is accepted and converted
    o, r, d, t, i, env_ids, masks = vec.recv()
    np.testing.assert_array_equal(env_ids, np.arange(6))
    assert masks.dtype == np.bool_ and masks.all()
    vec.close()
    vec.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        vec.recv()


def test_serial_zero_copy_off_returns_copies():
    vec = make_vecenv(CFG, "serial", num_envs=2, zero_copy=False)
    vec.async_reset(3)
    obs = vec.recv()[0]
    before = obs.copy()
    vec.send(np.ones((4, 2), dtype=np.int32))
    vec.recv()
    np.testing.assert_array_equal(obs, before)  # our copy did not change under us
    assert not np.shares_memory(obs, vec.observations)


def test_protocol_misuse_is_reported():
    vec = make_vecenv(CFG, "serial", num_envs=2)
    with pytest.raises(RuntimeError, match="async_reset"):
        vec.recv()
    vec.async_reset(0)
    with pytest.raises(RuntimeError, match="send.*without a recv|without a recv"):
        vec.send(np.zeros((4, 2), np.int32))
    vec.recv()
    with pytest.raises(RuntimeError, match="twice"):
        vec.recv()
    with pytest.raises(ValueError, match=r"shape \[4, 2\]"):
        vec.send(np.zeros((3, 2), np.int32))
    with pytest.raises(TypeError, match="integers"):
        vec.send(np.zeros((4, 2), np.float32))


def test_async_round_robin_order_and_infos():
    # 6 envs in 3 worker batches, 2 envs per recv: batches come back 0, 1, 2, 0, ... .
    vec = make_vecenv(CFG, "serial", num_envs=6, batch_size=2, num_workers=3)
    assert vec.agents_per_batch == 2 * AGENTS_PER_ENV
    records = rollout(vec, steps=3 * (MAX_STEPS + 2))
    starts = [int(r["env_ids"][0]) for r in records]
    assert starts[:6] == [0, 4, 8, 0, 4, 8]
    for r in records:
        assert r["env_ids"].tolist() == list(range(r["env_ids"][0], r["env_ids"][0] + 4))
    # Every env finishes an episode after MAX_STEPS steps; its infos arrive with its batch.
    finished = [length for r in records for length, _ in r["infos"]]
    assert len(finished) == 6 and set(finished) == {MAX_STEPS}
    with pytest.raises(RuntimeError, match="synchronous"):
        vec.step(np.zeros((4, 2), np.int32))


def test_same_seed_same_rollout_and_seed_matters():
    a = rollout(make_vecenv(CFG, "serial", num_envs=2, num_workers=2), steps=10, seed=5)
    b = rollout(make_vecenv(CFG, "serial", num_envs=2, num_workers=2), steps=10, seed=5)
    c = rollout(make_vecenv(CFG, "serial", num_envs=2, num_workers=2), steps=10, seed=6)
    assert_same_rollouts(a, b)
    assert not all(np.array_equal(x["obs"], y["obs"]) for x, y in zip(a, c))


def test_curriculum_state_round_trip_serial():
    vec = make_vecenv(CFG, "serial", num_envs=2, num_workers=2)
    states = vec.get_curriculum_state()
    assert len(states) == 2 and all("rng" in s for s in states)
    vec.call("curriculum.seed", 99)
    assert vec.get_curriculum_state() != states
    vec.set_curriculum_state(states)
    assert vec.get_curriculum_state() == states
    with pytest.raises(ValueError, match="num_workers=2"):
        vec.set_curriculum_state(states[:1])
    assert vec.call("agents_per_env") == [AGENTS_PER_ENV, AGENTS_PER_ENV]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_envs": 6, "num_workers": 4}, "num_envs=6 is not divisible by num_workers=4"),
        ({"num_envs": 2, "num_workers": 3}, "num_workers=3 is more than num_envs=2"),
        ({"num_envs": 4, "batch_size": 3}, "batch_size=3 .* must divide num_envs=4"),
        ({"num_envs": 4, "num_workers": 1, "batch_size": 2}, "multiple of the envs per worker"),
        ({"num_envs": 0}, "num_envs=0 must be a positive integer"),
        ({"num_envs": 2, "batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"num_envs": 2.5}, "num_envs=2.5 must be a positive integer"),
        ({"vectorization": "ray"}, "vectorization='ray' is not supported"),
        ({"zero_copy": "yes"}, "zero_copy='yes' must be True or False"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_bad_arguments_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_vecenv(CFG, **kwargs)


def test_unpicklable_curriculum_is_reported():
    from metta.mettagrid.curriculum.core import SingleTaskCurriculum

    cur = SingleTaskCurriculum("x", CFG)
    cur.callback = lambda: None  # lambdas cannot be pickled
    with pytest.raises(ValueError, match="cannot be pickled"):
        make_vecenv(cur, "serial")


# ------------------------------------------------------------------------------------------------------------
# Multiprocessing backend (one shared async vecenv: 4 envs, 2 workers, 2 envs per recv)


@pytest.fixture(scope="module")
def mp_async():
    vec = make_vecenv(CFG, "multiprocessing", num_envs=4, batch_size=2, num_workers=2)
    yield vec
    vec.close()


def test_multiprocessing_matches_serial_async(mp_async):
    steps = 2 * (MAX_STEPS + 3)
    serial = rollout(make_vecenv(CFG, "serial", num_envs=4, batch_size=2, num_workers=2), steps)
    multi = rollout(mp_async, steps)
    assert_same_rollouts(serial, multi)
    assert sum(len(r["infos"]) for r in multi) == 4  # every env's first episode ended and was reported
    assert [int(r["env_ids"][0]) for r in multi[:4]] == [0, 4, 0, 4]
    # Zero copy: recv hands out views of the shared buffer itself.
    mp_async.async_reset(1)
    obs = mp_async.recv()[0]
    assert np.shares_memory(obs, mp_async.observations)
    mp_async.send(np.zeros((4, 2), np.int32))


def test_multiprocessing_curriculum_state_and_call(mp_async):
    mp_async.async_reset(2)
    mp_async.recv()
    mp_async.send(np.zeros((4, 2), np.int32))  # a step is in flight while we talk to the workers
    states = mp_async.get_curriculum_state()
    assert len(states) == 2 and all("rng" in s for s in states)
    mp_async.call("curriculum.seed", 7)
    changed = mp_async.get_curriculum_state()
    assert changed != states
    mp_async.set_curriculum_state(states)
    assert mp_async.get_curriculum_state() == states
    mp_async.recv()  # the in-flight step's batch is still delivered
    mp_async.send(np.zeros((4, 2), np.int32))
    assert mp_async.call("env_offset") == [0, 2]


def test_worker_exception_carries_its_traceback(mp_async):
    with pytest.raises(WorkerError, match=r"(?s)worker 0 failed.*Traceback.*AttributeError.*no_such_method"):
        mp_async.call("no_such_method")
    assert mp_async.call("num_envs") == [2, 2]  # the workers survive an exception in a call


def test_multiprocessing_sync_close_is_fast_idempotent_and_leaves_no_children():
    vec = make_vecenv(CFG, "multiprocessing", num_envs=2, num_workers=2)
    pids = vec.worker_pids
    assert pids and children_of(os.getpid()) >= set(pids)
    serial = rollout(make_vecenv(CFG, "serial", num_envs=2, num_workers=2), steps=5)
    assert_same_rollouts(serial, rollout(vec, steps=5))
    vec.recv()  # leave a step in flight: close must not wait for us to read it
    t0 = time.perf_counter()
    vec.close()
    assert time.perf_counter() - t0 < 3.0
    vec.close()
    assert not any(alive(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        vec.async_reset(0)


def test_forgotten_vecenv_stops_its_workers():
    import gc

    vec = make_vecenv(CFG, "multiprocessing", num_envs=1, num_workers=1)
    pids = vec.worker_pids
    del vec
    gc.collect()  # weakref.finalize runs the shutdown when the vecenv is collected
    assert not any(alive(p) for p in pids)


def test_worker_exits_when_parent_is_killed():
    script = textwrap.dedent(
        f"""
        import sys, time
        from metta.mettagrid.vecenv import make_vecenv
        cfg = {CFG!r}
        vec = make_vecenv(cfg, "multiprocessing", num_envs=1, num_workers=1)
        vec.async_reset(0)
        print(" ".join(map(str, vec.worker_pids)), flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert pids and all(alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), "worker outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_workers_never_share_a_cpu_and_leave_the_learners_core_alone():
    # 16 CPUs as 8 cores of 2 threads (Linux numbers siblings apart: CPU c and c + 8 share core c).
    cores = [[c, c + 8] for c in range(8)]
    assert pin_plan(cores, 7) == [1, 2, 3, 4, 5, 6, 7]  # one thread of every core but the learner's
    assert pin_plan(cores, 10) == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11]  # then second threads
    assert pin_plan(cores, 14) == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]
    assert pin_plan(cores, 16) == [None] * 16  # more workers than CPUs of their own: none pinned
    assert pin_plan([[0]], 2) == [None, None]
    # This machine: every allowed CPU in exactly one core group, and the plan never repeats a CPU.
    allowed = sorted(os.sched_getaffinity(0))
    groups = physical_cores(allowed)
    assert sorted(c for g in groups for c in g) == allowed
    for n in (1, 2, 4, 16):
        pinned = [c for c in worker_cpus(n) if c is not None]
        assert len(pinned) == len(set(pinned)) and not set(pinned) & set(groups[0])
