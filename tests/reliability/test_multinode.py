"""Two torchrun "nodes" on this machine training one run through torchrun's c10d rendezvous, elastically.

One run directory lives through (each step checked where it happens):

1. node A alone (``--nnodes=1:2``): world size 1;
2. node B joins: torchrun stops A's rank (SIGTERM: it saves) and restarts both, world size 2, which resumes the
   world-size-1 checkpoint (1 -> 2, totals kept by ``trainer.scale_batches_by_world_size``); global rank 0 holds
   the lock and writes, both ranks are local rank 0, seeds differ per global rank;
3. global rank 0 is SIGKILLed in the middle of a trainer-state write (``METTA_KILL_AT`` armed once):
   ``--max-restarts=2`` restarts both ranks, which resume from the newest complete checkpoint;
4. rank 1 is SIGKILLed at an arbitrary moment: the second restart, resumed the same way;
5. both launchers are SIGKILLed: the orphaned ranks notice, stop after the same iteration, rank 0 saves, both
   exit (same weights, the saved ones) and the lock is free;
6. a plain run.py (world size 1) resumes the world-size-2 checkpoint (2 -> 1) and finishes.

metrics.jsonl then holds every epoch exactly once, each 2048 agent steps further than the one before.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from run_helpers import Run, metrics_epochs, metrics_rows, run_env

from metta.agent.policy_store import read_policy_file
from metta.common.distributed import shared_store_restart_warning
from metta.common.run_lock import RunLock
from metta.rl.checkpoint import list_trainer_states, load_latest_checkpoint

pytestmark = pytest.mark.timeout(400)

TOTALS = ["trainer.scale_batches_by_world_size=true", "trainer.batch_size=2048", "trainer.minibatch_size=512"]
STEPS = 2048  # per epoch at any world size: the totals are kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, condition, runs: list[Run], timeout: float = 150):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        logs = "\n".join(f"--- {r.log_path.name}\n{r.log[-2500:]}" for r in runs)
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{logs}"
        time.sleep(0.1)
    return result


def _workers(nodes: list[Run]) -> dict[int, psutil.Process]:
    """The live run.py ranks of ``nodes`` by global rank."""
    ranks = {}
    for node in nodes:
        try:
            children = psutil.Process(node.pid).children()
        except psutil.NoSuchProcess:
            continue
        for child in children:
            try:
                ranks[int(child.environ()["RANK"])] = child
            except (KeyError, psutil.Error):
                pass
    return ranks


def test_two_nodes_grow_restart_lose_their_launchers_and_shrink(tmp_path: Path):
    run_dir, ckpts, fired = tmp_path / "mn", tmp_path / "mn" / "checkpoints", tmp_path / "fault_fired"
    fired.touch()  # the kill below is disarmed until the test removes this file
    port = _free_port()
    env = run_env(
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", METTA_KILL_AT="write:trainer_state_*", METTA_FAULT_ONCE=str(fired)
    )

    def node(*rdzv_conf: str) -> Run:
        conf = ",".join(["last_call_timeout=1", *rdzv_conf])
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc_per_node=1"]
        launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=mn", "--max-restarts=2"]
        launcher += [f"--rdzv-conf={conf}", "--monitor-interval=0.2"]
        extra = [*TOTALS, "trainer.worker_timeout_s=20", "debug_dump_weights=true"]
        return Run(tmp_path, "mn", None, *extra, env=env, launcher=launcher)

    def resumes() -> list[int]:
        """The epoch of every checkpoint node A's rank resumed from, in order (A has a rank in every group)."""
        return [int(m.group(1)) for m in re.finditer(r"resumed from \S+: epoch (\d+)", a.log)]

    a = node("is_host=1")  # A serves the rendezvous store; B connects to it
    nodes = [a]

    def logs() -> str:
        return "".join(n.log for n in nodes)

    try:
        # 1. A alone.
        a.wait_for_epoch(1, timeout=150)
        assert "rank 0 of 1 (local rank 0)" in a.log
        # 2. B joins: world size 2, resuming what A saved when torchrun stopped it.
        b = node("is_host=0")  # on one machine both match the endpoint: only A may serve it
        nodes.append(b)
        before = len(resumes())
        _wait(
            "a resume at world size 2",
            lambda: "resuming at world size 2 from a checkpoint written at world size 1" in logs(),
            nodes,
        )
        assert "trainer.scale_batches_by_world_size=true keeps the totals" in logs()
        assert (
            "now batch_size 2048 in all (2 x 1024)" in logs() and "before: batch_size 2048 in all (1 x 2048)" in logs()
        )
        grown = resumes()[before]
        a.wait_for_epoch(grown + 1)
        assert "rank 0 of 2 (local rank 0)" in logs() and "rank 1 of 2 (local rank 0)" in logs()
        assert "rank 0: torch and numpy seeded with 0, the envs with 0" in logs()
        assert "rank 1: torch and numpy seeded with 1, the envs with 1000" in logs()
        workers = _workers(nodes)
        holder = (run_dir / "run.lock").read_text()
        assert f'"pid": {workers[0].pid}' in holder  # global rank 0 holds the lock (and is the only writer)

        # 3. Rank 0 killed while it writes a trainer state: both ranks restart and resume.
        before = len(resumes())
        fired.unlink()
        psutil.wait_procs(list(workers.values()), timeout=120)
        assert fired.exists(), logs()[-3000:]
        newest = load_latest_checkpoint(str(ckpts))
        assert (ckpts / f"model_{newest.epoch + 1:04d}.pt").exists()  # written before the trainer state it lacks
        _wait("the restart's resume", lambda: len(resumes()) > before, nodes)
        assert resumes()[before] == newest.epoch
        # 4. Rank 1 killed at an arbitrary moment (an epoch after the restart): the second restart.
        a.wait_for_epoch(newest.epoch + 2)
        before, workers = len(resumes()), _workers(nodes)
        workers[1].kill()
        psutil.wait_procs(list(workers.values()), timeout=120)
        newest = load_latest_checkpoint(str(ckpts))
        _wait("the second restart's resume", lambda: len(resumes()) > before, nodes)
        assert resumes()[before] == newest.epoch
        a.wait_for_epoch(newest.epoch + 1)

        # 5. Both launchers SIGKILLed: the ranks notice, finish the iteration, save, exit and free the lock.
        workers = _workers(nodes)
        assert sorted(workers) == [0, 1]
        for n in nodes:
            os.kill(n.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(list(workers.values()), timeout=60)  # (init reaps them: no exit codes here)
        assert not alive, logs()[-3000:]
    finally:
        for worker in _workers(nodes).values():  # torchrun starts its ranks in sessions of their own
            worker.kill()
        for n in nodes:
            n.kill()
    # Each rank's watcher polls for its launcher every 0.5 s; the first to notice logs it and asks for the stop, and
    # the other may learn of it through the all-reduce of should_stop and exit before its own next poll. Rank 0
    # reports whichever reached it first: its own watcher, or the other rank's stop.
    assert 1 <= logs().count("the torchrun launcher (pid") <= 2
    assert re.search(r"stopped by (the launcher's death|a signal to another rank): epoch", logs()), logs()[-3000:]
    for n in nodes:  # the last group ended cleanly on both nodes
        assert "Traceback" not in n.log.split("resumed from")[-1], n.log[-3000:]
    RunLock(run_dir).acquire().release()
    last = metrics_epochs(run_dir)[-1]
    saved = load_latest_checkpoint(str(ckpts))
    assert saved.epoch == last and saved.world_size == 2
    w0 = torch.load(run_dir / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(run_dir / "rank1_weights.pt", weights_only=True)
    state = read_policy_file(saved.policy_path)["state_dict"]
    for key, value in w0.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, w1[key]) and torch.equal(value, state[key]), key

    # 6. A plain run.py resumes at world size 1 with the same totals and finishes.
    alone = Run(tmp_path, "mn", None, *TOTALS, f"trainer.total_timesteps={(last + 1) * STEPS}", env=run_env())
    assert alone.finish() == 0, alone.log[-3000:]
    assert "resuming at world size 1 from a checkpoint written at world size 2" in alone.log
    assert "now batch_size 2048 in all (1 x 2048)" in alone.log
    assert "curriculum state restored from" in alone.log
    rows = metrics_rows(run_dir)
    assert [r["epoch"] for r in rows] == list(range(1, last + 2))
    assert [r["agent_step"] for r in rows] == [e * STEPS for e in range(1, last + 2)]
    assert [e for e, _ in list_trainer_states(str(ckpts))] == [last + 1, last]


def test_torchrun_restarts_over_its_shared_store_are_warned_about_with_the_fix():
    """torchrun --max-restarts with the rendezvous store shared with the workers (torch's default): a restarted
    c10d group can find the dead group's addresses, so rank 0 says so, naming the variable that fixes it."""
    shared = {"TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    warning = shared_store_restart_warning(shared)
    assert "--max-restarts=2 shares its rendezvous store" in warning
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun" in warning
    assert shared_store_restart_warning({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"}) is None  # with it
    assert shared_store_restart_warning({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"}) is None  # no restarts
